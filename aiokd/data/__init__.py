"""Data: raw parallel text in, prepared data directories and batches out."""
