"""Importers of weights trained by other codebases: pure functions from a dict of numpy arrays
(a state dict, read by the caller) to the variables of one of our networks."""
