"""The model registry, classifier heads, Model A, weight sources, the shared forward pass and a loaded run."""
