"""The exception root of ``provisioning`` and the errors an IT person acts on.

Each message is one line naming what is wrong and where; the command that raised it changed
nothing.
"""


class ProvisioningError(Exception):
    """Root of every error raised by ``provisioning``."""


class SiteError(ProvisioningError):
    """The site folder is missing, already initialised, or damaged (a CA or key is missing)."""


class DeviceError(ProvisioningError, LookupError):
    """A unit id is unknown, malformed, or not allowed (e.g. the receiver's own id)."""


class KeyFileError(ProvisioningError, PermissionError):
    """A private key file is unreadable or readable by others than its owner."""
