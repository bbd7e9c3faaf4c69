"""
The one interface every power driver implements.

A *driver type* (:class:`IDriverType`) knows its name, its settings schema
and its capabilities, and builds a *bound driver* (:class:`IPowerDriver`)
for one agent's validated parameters.  Resources shared between agents --
IPMI sessions per BMC, the SNMP engine, the HTTP connection pool -- live in
the driver type, which is built once per process and passed in.
"""

import attrs
from twisted.internet import defer
from zope.interface import Attribute, Interface

from powerctl.power import Action


@attrs.frozen
class Capabilities:
    """What a driver can do, so callers need not try and fail."""

    queryable: bool = True
    soft_off: bool = True
    native_cycle: bool = False


@attrs.frozen
class Timing:
    """
    Per-driver bounds.  ``timeout`` bounds one protocol call; ``retries``
    and ``backoff`` govern transient failures (unreachable, timeout);
    ``verify_timeout`` bounds waiting for the state to be reached, polled
    every ``poll_interval``; ``soft_off_timeout`` is how long a graceful
    shutdown may take before a hard off.
    """

    timeout: float = 10.0
    retries: int = 2
    backoff: float = 1.0
    backoff_max: float = 10.0
    verify_timeout: float = 60.0
    poll_interval: float = 1.0
    soft_off_timeout: float = 120.0


class IPowerDriver(Interface):
    """
    Power control of one agent (one BMC, one PDU outlet, one Redfish system).

    Every method returns a Deferred firing with the verified
    :class:`~powerctl.power.PowerState`, or failing with a
    :class:`~powerctl.drivers.errors.PowerError`.  Every Deferred is
    cancellable; cancelling stops the work promptly.
    """

    capabilities = Attribute(":class:`Capabilities` of this agent.")

    def on():
        """Power on and verify; a host that is already on is left alone."""

    def off():
        """Hard power off and verify."""

    def soft_off():
        """Graceful shutdown, hard off after ``soft_off_timeout``; verified."""

    def cycle():
        """Verified off, then verified on."""

    def query():
        """The current power state."""

    def quiesced():
        """
        A Deferred that fires once no call of ours is still running against
        the device (a cancelled call may still hold a thread or a session
        for a bounded time).  The registry waits for it before it starts the
        action that superseded a cancelled one.
        """


class IDriverType(Interface):
    """A kind of driver: ``ipmi``, ``snmp``, ``redfish``, ``webhook``, ``manual``."""

    name = Attribute("The name used in power configurations.")
    schema = Attribute(":class:`~powerctl.drivers.schema.Schema` of its parameters.")
    capabilities = Attribute("Default :class:`Capabilities`.")

    def bind(settings):
        """
        Return an :class:`IPowerDriver` for ``settings``, which
        ``schema.validate`` already returned.  Does no I/O.
        """

    def close():
        """Release shared resources (sessions, engines, pools); a Deferred."""


_METHODS = {
    Action.ON: "on",
    Action.OFF: "off",
    Action.SOFT_OFF: "soft_off",
    Action.CYCLE: "cycle",
    Action.QUERY: "query",
    Action.FENCE: "off",  # a fence is a verified off (the topology decides which levels)
}


def perform(driver, action):
    """Call the :class:`IPowerDriver` method for ``action``; a Deferred."""
    return defer.maybeDeferred(getattr(driver, _METHODS[Action.parse(action)]))
