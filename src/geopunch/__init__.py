"""geopunch: geofence and punch-validation gRPC service."""

__version__ = "0.1.0"
