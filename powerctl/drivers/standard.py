"""
The standard driver catalogue: one instance of every real driver type.

Driver types own what their agents share (IPMI sessions and threads, the
SNMP engine, HTTP pools), so a process builds them exactly once and passes
the catalogue around.  This is the one place that knows the full list, so
the CLI, the pserv and the demo cannot drift apart.  Nothing here does I/O:
each type creates its sessions, engine or pools on first use, and
:meth:`~powerctl.drivers.catalogue.DriverCatalogue.close` releases them.
"""

from powerctl.drivers.catalogue import DriverCatalogue, LazyType
from powerctl.drivers.interface import Timing

#: The names :func:`standard_catalogue` provides, for documentation and tests.
STANDARD_DRIVERS = ("ipmi", "manual", "redfish", "snmp", "webhook")


def driver_type_class(name):
    """
    The standard driver type class called ``name``, its module imported
    now (imported late: see :func:`standard_catalogue`).
    """
    if name == "ipmi":
        from powerctl.drivers.ipmi import IpmiDriverType as cls
    elif name == "snmp":
        from powerctl.drivers.snmp import SnmpDriverType as cls
    elif name == "redfish":
        from powerctl.drivers.redfish import RedfishDriverType as cls
    elif name == "webhook":
        from powerctl.drivers.webhook import WebhookDriverType as cls
    elif name == "manual":
        from powerctl.drivers.manual import ManualDriverType as cls
    else:
        raise KeyError(name)
    return cls


def driver_type_classes():
    """The standard driver type classes, unbuilt (imported late: see :func:`standard_catalogue`)."""
    return tuple(driver_type_class(name) for name in ("ipmi", "snmp", "redfish", "webhook",
                                                        "manual"))


def standard_schemas():
    """
    ``{name: Schema}`` of every standard driver without building any driver
    type (no thread pool, no engine): what a REST client needs to convert
    ``-p`` values and to know which parameters are secret.
    """
    return {cls.name: cls.schema for cls in driver_type_classes()}


def standard_catalogue(reactor, timing=None, clock=None, manual_timeout=None,
                       user_agent=None, bmc_limits=None):
    """
    A :class:`DriverCatalogue` of ``ipmi``, ``snmp``, ``redfish``,
    ``webhook`` and ``manual``, all sharing ``timing`` (a
    :class:`~powerctl.drivers.interface.Timing`; the defaults if None).

    ``clock`` (default: ``reactor``) drives timeouts and retries; tests may
    pass a ``task.Clock`` while ``reactor`` still does the networking.
    ``manual_timeout``: seconds a ``manual`` agent without a ``timeout`` of
    its own waits for an operator's confirmation (None: forever).
    ``user_agent``: the ``User-Agent`` the HTTP drivers (redfish, webhook)
    send (None: treq's default); a pserv names itself there.
    ``bmc_limits``: a :class:`~powerctl.drivers.bmclimit.BmcLimits`; every
    driver then takes a slot of its device (``host:port``) for each call,
    from one :class:`~powerctl.drivers.bmclimit.BmcLimiter` shared by all
    driver types (None: no limits beyond each driver's own).
    The driver modules are imported when a type is first asked for
    (:class:`~powerctl.drivers.catalogue.LazyType`), not at module level,
    so that importing this module does not pull in pyghmi and pysnmp before
    an entry point has installed the asyncio reactor, and a pserv without
    SNMP or IPMI nodes never imports pysnmp or pyghmi (issue 14: memory).
    """
    timing = Timing() if timing is None else timing
    clock = reactor if clock is None else clock
    limiter = None
    if bmc_limits is not None:
        from powerctl.drivers.bmclimit import BmcLimiter

        limiter = BmcLimiter(clock, bmc_limits)
    makers = {
        "ipmi": lambda cls: cls(reactor, clock=clock, timing=timing, limiter=limiter),
        "snmp": lambda cls: cls(clock=clock, timing=timing, limiter=limiter),
        "redfish": lambda cls: cls(reactor, clock=clock, timing=timing, user_agent=user_agent,
                                   limiter=limiter),
        "webhook": lambda cls: cls(reactor, clock=clock, timing=timing, user_agent=user_agent,
                                   limiter=limiter),
        "manual": lambda cls: cls(clock, default_timeout=manual_timeout),
    }
    return DriverCatalogue([
        LazyType(name, lambda name=name, make=make: make(driver_type_class(name)))
        for name, make in makers.items()])
