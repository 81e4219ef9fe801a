"""Alembic revisions, one file each, named by their revision id.

A new revision also moves ``store.HEAD_REVISION`` to its id: a store already
at that revision opens without loading alembic (a test compares the two).
"""
