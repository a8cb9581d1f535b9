"""The training loop and the run directory it owns."""
