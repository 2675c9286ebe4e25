"""painav's contract between bedside unit and hospital: clip envelope, signatures, MQTT messages.

Pure: no hardware, no network, nothing from ``daemon`` or ``server``.
"""
