"""Vectorized fence engine: local metric frames, the index, batch membership."""
