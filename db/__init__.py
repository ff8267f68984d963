"""The node's record (SQLAlchemy 2.0 models, Alembic migrations); knows nothing of models or networking."""
