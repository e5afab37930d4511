"""Weights: load networks by name or path, read checkpoints as data, import the published DnCNN weights."""
