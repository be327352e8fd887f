"""Saliency maps of trained runs (captum), their model-randomisation check, and the pointing game."""
