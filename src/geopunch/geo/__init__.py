"""The fence engine; its public face is ``geopunch.geo.engine``."""
