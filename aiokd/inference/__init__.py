"""Translating with a trained family: beam search, the Python API, the translate step."""
