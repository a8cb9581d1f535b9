"""Scoring students, measuring their cost, choosing one for a device."""
