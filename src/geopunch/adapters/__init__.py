"""Adapters: the database and gRPC sides of the ports."""
