"""The Transformer, its CPU kernels and its files on disk."""
