"""
Fake driver types and devices, implementing
:mod:`powerctl.drivers.interface`.

They replace the protocol (IPMI, SNMP, HTTP), not the product: a
:class:`FakeDriverType` goes into a real
:class:`~powerctl.drivers.catalogue.DriverCatalogue`, is validated by a
real :class:`~powerctl.drivers.schema.Schema`, and its devices are driven
by the real executor, multi-agent rules and registry.  A test scripts a
device (its state, a failure, calls held open until it says) and reads
back every call it received.
"""

import types

import attrs
from twisted.internet import defer
from zope.interface import implementer

from powerctl.drivers.errors import AuthenticationError, UnreachableError
from powerctl.drivers.interface import Capabilities, IDriverType, IPowerDriver
from powerctl.drivers.schema import Param, Schema
from powerctl.power import PowerState

#: The state each call leaves a device in (``query`` leaves it alone).
_RESULTS = types.MappingProxyType({
    "on": PowerState.ON, "off": PowerState.OFF, "soft_off": PowerState.OFF,
    "cycle": PowerState.ON, "query": None})


@attrs.define(eq=False)
class HeldCall:
    """A call a holding device has not answered yet."""

    name: str
    deferred: defer.Deferred


@implementer(IPowerDriver)
class FakeDevice:
    """
    One simulated power device (a BMC, one PDU outlet).

    Calls succeed at once with the state they leave the device in, unless
    ``failure`` is set (every call fails with it) or ``hold`` is true (calls
    wait in :attr:`held` until :meth:`release` or :meth:`fail`).  A held
    call that is cancelled is recorded in :attr:`cancelled`.  ``calls``
    lists every method called, in order.
    """

    def __init__(self, state=PowerState.OFF, capabilities=None, hold=False):
        self.state = PowerState(state)
        self.capabilities = capabilities or Capabilities()
        self.hold = hold
        self.failure = None
        self.calls = []
        self.held = []
        self.cancelled = []

    def _call(self, name):
        self.calls.append(name)
        if self.failure is not None:
            return defer.fail(self.failure)
        if not self.hold:
            return defer.succeed(self._apply(name))

        def cancel(d):
            self.cancelled.append(name)
            self.held[:] = [c for c in self.held if c.deferred is not d]

        call = HeldCall(name, defer.Deferred(cancel))
        self.held.append(call)
        return call.deferred

    def _apply(self, name):
        self.state = _RESULTS[name] or self.state
        return self.state

    def release(self):
        """Answer the oldest held call as the device would; returns its name."""
        call = self.held.pop(0)
        call.deferred.callback(self._apply(call.name))
        return call.name

    def fail(self, error):
        """Fail the oldest held call with ``error``; returns its name."""
        call = self.held.pop(0)
        call.deferred.errback(error)
        return call.name

    def on(self):
        return self._call("on")

    def off(self):
        return self._call("off")

    def soft_off(self):
        return self._call("soft_off")

    def cycle(self):
        return self._call("cycle")

    def query(self):
        return self._call("query")

    def quiesced(self):
        return defer.succeed(None)


@implementer(IDriverType)
class FakeDriverType:
    """
    A driver kind (``fake`` by default) whose agents are :class:`FakeDevice`
    objects, one per ``device`` parameter: every agent naming the same
    device shares it, as agents of one BMC would.  ``password`` is a secret
    parameter, for tests of redaction.  New devices start in ``initial``
    and ``hold`` their calls if told to.
    """

    def __init__(self, name="fake", initial=PowerState.OFF, hold=False, capabilities=None):
        self.name = name
        self.capabilities = capabilities or Capabilities()
        self.schema = Schema(name, self._params())
        self.initial = initial
        self.hold = hold
        self.devices = {}
        self.closed = False

    def _params(self):
        return (Param("device", required=True, help="which simulated device"),
                Param("password", secret=True, default=""))

    def _key(self, settings):
        return settings["device"]

    def device(self, key):
        """The device of ``key`` (built if new), to script or inspect."""
        if key not in self.devices:
            self.devices[key] = FakeDevice(self.initial, self.capabilities, self.hold)
        return self.devices[key]

    def bind(self, settings):
        return self.device(self._key(settings))

    def close(self):
        self.closed = True
        return defer.succeed(None)


@implementer(IDriverType)
class FakePduDriverType(FakeDriverType):
    """
    A PDU driver kind (named ``snmp`` by default, which is the name the
    poller batches by) that reads many outlets of one PDU in one request,
    like :meth:`powerctl.drivers.snmp.SnmpDriverType.query_outlets`.

    Its devices are keyed ``(host, outlet)``; settings other than
    ``outlet`` (host, port, community) identify the PDU.  Every batched
    read is recorded in :attr:`outlet_queries` as ``(host, community,
    [outlets])``; a host in :attr:`unreachable` fails its reads, one in
    :attr:`refusing` refuses their credentials (``AuthenticationError``).
    """

    def __init__(self, name="snmp", **kwargs):
        super().__init__(name, **kwargs)
        self.outlet_queries = []
        self.unreachable = set()
        self.refusing = set()

    def _params(self):
        return (Param("host", "host", required=True), Param("port", "port", default=161),
                Param("community", default="public", secret=True),
                Param("outlet", "int", required=True, minimum=1))

    def _key(self, settings):
        return (settings["host"], settings["outlet"])

    def query_outlets(self, settings, outlets=None):
        """``{outlet: PowerState}`` of one PDU, in one (recorded) request."""
        host = settings["host"]
        outlets = list(outlets or [])
        self.outlet_queries.append((host, settings["community"], outlets))
        if host in self.unreachable:
            return defer.fail(UnreachableError(f"PDU {host} does not answer"))
        if host in self.refusing:
            return defer.fail(AuthenticationError(f"PDU {host} refuses the community"))
        return defer.succeed({o: self.device((host, o)).state for o in outlets})
