"""Entry points: the CLI, the server runtime and the process supervisor.

They sit above every other layer and are wired by ``geopunch.bootstrap``."""
