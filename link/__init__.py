"""painav's network link: the one MQTT v5 client (paho behind painav's types: publish handles,
persistent session, reconnect with back-off, acknowledgement only of what was handled) and the
TLS pieces that the unit, the receiver and the extraction worker share. Imports ``protocol``
at most; ``daemon`` and ``server`` both build on it and never on each other.
"""

from .client import MqttLink, Received, guarded
from .errors import LinkError, Redeliver
from .published import Published
from .tls import client_context, directly_issued, issued_by_any

__all__ = [
    "LinkError",
    "MqttLink",
    "Published",
    "Received",
    "Redeliver",
    "client_context",
    "directly_issued",
    "guarded",
    "issued_by_any",
]
