"""
The driver error taxonomy.

Every failure a driver reports is one of these, so that the rest of the
product can act on the *kind* of failure (retry an unreachable BMC, stop
retrying a bad password, mark a node non-responsive) without parsing text.
"""


class PowerError(Exception):
    """Base of every driver failure. ``kind`` is a stable, short name."""

    kind = "error"
    #: Whether retrying the same call may succeed.
    transient = False

    def __str__(self):
        return " ".join(str(a) for a in self.args) or self.kind


class AuthenticationError(PowerError):
    """The device refused our credentials."""

    kind = "auth"


class UnreachableError(PowerError):
    """Nothing answered, or the connection was refused or dropped."""

    kind = "unreachable"
    transient = True


class PowerTimeout(PowerError):
    """The device did not answer, or did not reach the state, in time."""

    kind = "timeout"
    transient = True


class ProtocolError(PowerError):
    """The device answered something we could not understand or act on."""

    kind = "protocol"


class UnsupportedError(PowerError):
    """The device (or driver) cannot do what was asked."""

    kind = "unsupported"


class DriverSettingsError(PowerError):
    """
    A driver's settings are unusable (unknown driver, bad parameter): found
    before any I/O, so nothing was sent.  Base of :class:`UnknownDriver` and
    :class:`InvalidParameters`.
    """

    kind = "config"


class UnknownDriver(DriverSettingsError):
    """No driver of that name exists."""

    def __init__(self, name, known=()):
        super().__init__(
            f"unknown driver {name!r}"
            + (f"; known drivers: {', '.join(sorted(known))}" if known else "")
        )
        self.name = name


class InvalidParameters(DriverSettingsError):
    """A power parameter is missing, unknown or ill-typed."""

    def __init__(self, parameter, reason, driver=None):
        where = f"{driver} " if driver else ""
        super().__init__(f"{where}parameter {parameter!r}: {reason}")
        self.parameter = parameter
        self.reason = reason
        self.driver = driver
