"""Readers of posed image sources; every reader yields core.types.Frame."""
