"""The bedside unit: recorder, outbox, announcer and clip server (imports only ``protocol``)."""
