"""One module per schema revision, applied in order by :func:`server.catalog.run_migrations`."""
