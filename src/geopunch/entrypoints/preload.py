"""What the fork server of ``serve --processes`` imports before it forks any worker.

The server's modules, once, with the collector paused, and then everything
they made is frozen out of its reach (``gc.freeze``, as Python's
documentation advises before forking without exec): a worker's collections
then never write to those objects' headers, so the pages holding them stay
shared between the workers instead of being copied into each.
"""

from geopunch.entrypoints.process import lasting_imports

with lasting_imports():
    import geopunch.entrypoints.server  # noqa: F401  (imported for its side effects)
