"""The model registry, classifier heads, Model A, and weight sources."""
