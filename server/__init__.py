"""The hospital side: the receiver (ingest over MQTT, pull, verify, store, receipts, reconcile),
its catalog and audit log, and the fleet view IT reads. Extraction and export come next.
Imports ``protocol`` and ``link`` only, never ``daemon``."""
