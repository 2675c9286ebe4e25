"""The catalog's Alembic migrations (a package so that they ship with the code)."""
