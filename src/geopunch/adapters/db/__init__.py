"""SQLAlchemy Core storage."""
