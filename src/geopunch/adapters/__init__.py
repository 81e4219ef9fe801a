"""Adapters: the database, gRPC and HTTP sides of the ports."""
