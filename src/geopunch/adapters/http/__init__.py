"""HTTP/JSON side: the spec's REST API on FastAPI."""
