"""The hospital side: ingest, store, catalog, extraction, export (imports only ``protocol``)."""
