"""What the test servers' fork server imports once (see ``tests.forked_server``).

Importing the server module builds the empty fence index, which loads numba's
compiler and its first cached kernel; nothing here starts a thread or opens a
store, so a fork of this interpreter is as clean as a fresh one.
"""

from geopunch.entrypoints.process import lasting_imports

# What the imports make lives as long as every fork: loaded with the
# collector paused and then frozen out of its reach (as
# ``geopunch.entrypoints.preload`` does for the workers), a fork's
# collections walk only its own objects, not these again at every start.
with lasting_imports():
    import alembic.command
    import alembic.config

    import geopunch.entrypoints.cli
    import geopunch.entrypoints.server
    import geopunch.entrypoints.supervisor

__all__ = ["alembic", "geopunch"]
