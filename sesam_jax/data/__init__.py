"""Datasets, weak labels and the host input pipeline."""
