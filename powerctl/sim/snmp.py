"""
A simulated switched PDU speaking SNMP, built on pysnmp's agent side.

It serves one :mod:`~powerctl.drivers.snmp_families` family over real UDP
on 127.0.0.1, so the ``snmp`` driver is tested through the same packets a
real PDU would see: v1/v2c communities (a read-only one that is *refused*
on SET, and a read-write one), an optional SNMPv3 user with
authentication and privacy, a configurable latency, a switching delay
(the outlet changes state some time after the SET, as relays do), and
faults:

``hang``  never answer anything;
``error`` answer every request with ``genErr``;
``drop``  silently drop a fraction (``drop_rate``) of the datagrams.

``max_varbinds`` plays an agent with a small message buffer: a GET of more
variables than that is answered ``tooBig`` (RFC 3416 4.2.1);
``max_datagram`` one that silently drops a datagram longer than that many
bytes instead.

Access control is enforced here, not left to pysnmp: with a custom MIB
controller pysnmp 7 does not check VACM unless asked, and lets a user with
an empty write view write.  Every SET is checked against the set of
security names that were configured as writers.

Use :func:`start` (``await``-able from a Deferred chain) and
:func:`add_arguments` for a command line; :class:`SnmpPduSim` exposes
``port``, ``outlets`` (``{outlet: PowerState}``), counters and ``stop()``.
"""

import asyncio
import random
import socket

import attrs
from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.entity import config, engine
from pysnmp.entity.rfc3413 import cmdrsp, context
from pysnmp.proto import rfc1902, rfc1905
from pysnmp.smi import error as smi_error
from twisted.internet import defer

from powerctl.drivers import snmp_families
from powerctl.drivers.snmp import AUTH_PROTOCOLS, PRIV_PROTOCOLS
from powerctl.power import PowerState

FAULTS = ("none", "hang", "error", "drop")

_RO_NAME = "powerctl-sim-ro"
_RW_NAME = "powerctl-sim-rw"


@attrs.frozen
class SimOptions:
    """Everything a simulated PDU is configured with (a value object)."""

    family: str = attrs.field(default="apc-rpdu", validator=attrs.validators.in_(snmp_families.NAMES))
    outlets: int = attrs.field(default=8, validator=attrs.validators.ge(1))
    #: "on", "off", or one of them per outlet, comma-separated
    initial: str = "off"
    unit: int = 1
    host: str = "127.0.0.1"
    port: int = 0
    community: str = "public"
    write_community: str | None = "private"
    v3_user: str | None = None
    auth_protocol: str = attrs.field(default="sha", validator=attrs.validators.in_(AUTH_PROTOCOLS))
    auth_key: str | None = None
    priv_protocol: str = attrs.field(default="none", validator=attrs.validators.in_(PRIV_PROTOCOLS))
    priv_key: str | None = None
    latency: float = 0.0
    switch_delay: float = 0.0
    fault: str = attrs.field(default="none", validator=attrs.validators.in_(FAULTS))
    drop_rate: float = 0.5
    seed: int | None = None
    #: answer tooBig to a GET of more variables (None: no limit)
    max_varbinds: int | None = None
    #: drop, unanswered, a datagram longer than this (None: no limit)
    max_datagram: int | None = None

    def initial_states(self):
        """``{outlet: PowerState}`` from :attr:`initial`."""
        words = [w.strip().lower() for w in self.initial.split(",") if w.strip()]
        if len(words) == 1:
            words = words * self.outlets
        if len(words) != self.outlets or not set(words) <= {"on", "off"}:
            raise ValueError(
                f"initial must be 'on', 'off' or {self.outlets} comma-separated on/off values"
            )
        return {n + 1: PowerState(w) for n, w in enumerate(words)}


def add_arguments(parser):
    """Add the simulator's options to an argparse parser (``powerctl sim snmp``)."""
    d = SimOptions()
    parser.add_argument("--family", choices=snmp_families.NAMES, default=d.family)
    parser.add_argument("--outlets", type=int, default=d.outlets, help="number of outlets (1-48 typical)")
    parser.add_argument("--initial", default=d.initial, help="on, off, or a comma list per outlet")
    parser.add_argument("--unit", type=int, default=d.unit, help="unit / pduId / module served")
    parser.add_argument("--host", default=d.host, help="listen address (loopback)")
    parser.add_argument("--port", type=int, default=d.port, help="UDP port; 0 picks a free one")
    parser.add_argument("--community", default=d.community, help="read-only community")
    parser.add_argument("--write-community", default=d.write_community, help="read-write community")
    parser.add_argument("--v3-user", default=None)
    parser.add_argument("--auth-protocol", choices=sorted(AUTH_PROTOCOLS), default=d.auth_protocol)
    parser.add_argument("--auth-key", default=None)
    parser.add_argument("--priv-protocol", choices=sorted(PRIV_PROTOCOLS), default=d.priv_protocol)
    parser.add_argument("--priv-key", default=None)
    parser.add_argument("--latency", type=float, default=d.latency, help="seconds before answering")
    parser.add_argument("--switch-delay", type=float, default=d.switch_delay,
                        help="seconds between a SET and the outlet changing")
    parser.add_argument("--fault", choices=FAULTS, default=d.fault)
    parser.add_argument("--drop-rate", type=float, default=d.drop_rate)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-varbinds", type=int, default=None,
                        help="answer tooBig to a GET of more variables than this")
    parser.add_argument("--max-datagram", type=int, default=None,
                        help="drop, unanswered, datagrams longer than this many bytes")
    return parser


def options_from_args(args):
    """A :class:`SimOptions` from parsed arguments (or any attribute bag)."""
    fields = {f.name for f in attrs.fields(SimOptions)}
    return SimOptions(**{k: v for k, v in vars(args).items() if k in fields})


class _FaultyUdp(udp.UdpAsyncioTransport):
    """The agent's UDP endpoint; applies hang/drop/latency before pysnmp sees a datagram."""

    def __init__(self, sim):
        super().__init__()
        self._sim = sim

    def datagram_received(self, datagram, transportAddress):
        limit = self._sim.options.max_datagram
        if limit is not None and len(datagram) > limit:
            self._sim.datagrams += 1
            return
        deliver = lambda: udp.UdpAsyncioTransport.datagram_received(  # noqa: E731
            self, datagram, transportAddress
        )
        self._sim._on_datagram(deliver)


class _OutletMib:
    """
    A MIB instrumentation controller serving one family's outlet table out
    of the simulator's state.  It checks access itself (see module doc).
    """

    def __init__(self, sim):
        self._sim = sim

    # -- helpers --------------------------------------------------------

    def _security_name(self, ctx):
        execution = ctx["snmpEngine"].observer.get_execution_context(
            "rfc3412.receiveMessage:request"
        )
        return str(execution["securityName"])

    def _readable(self, name, ctx, idx):
        ac = ctx.get("acFun")
        return not (ac and ac("read", (name, None), idx=idx, **ctx))

    def _check_fault(self, name, idx):
        if self._sim.fault == "error":
            raise smi_error.GenError(name=name, idx=idx)

    # -- the three operations the command responders call ---------------

    def read_variables(self, *varBinds, **ctx):
        limit = self._sim.options.max_varbinds
        if limit is not None and len(varBinds) > limit:
            raise smi_error.TooBigError(name=varBinds[0][0], idx=0)
        out = []
        for idx, (name, _) in enumerate(varBinds):
            self._check_fault(name, idx)
            value = self._sim._value(tuple(name)) if self._readable(name, ctx, idx) else None
            out.append((name, value if value is not None else rfc1905.noSuchInstance))
        return out

    def read_next_variables(self, *varBinds, **ctx):
        out = []
        for idx, (name, _) in enumerate(varBinds):
            self._check_fault(name, idx)
            nxt = self._sim._next_oid(tuple(name))
            while nxt is not None and not self._readable(rfc1902.ObjectName(nxt), ctx, idx):
                nxt = self._sim._next_oid(nxt)
            if nxt is None:
                out.append((name, rfc1905.endOfMibView))
            else:
                out.append((rfc1902.ObjectName(nxt), self._sim._value(nxt)))
        return out

    def write_variables(self, *varBinds, **ctx):
        writer = self._security_name(ctx) in self._sim._writers
        plan = []
        for idx, (name, value) in enumerate(varBinds):
            self._check_fault(name, idx)
            ac = ctx.get("acFun")
            if not writer or (ac and ac("write", (name, value), idx=idx, **ctx)):
                raise smi_error.NoAccessError(name=name, idx=idx)
            plan.append(self._sim._plan_set(tuple(name), value, idx))
        for action in plan:
            action()
        return list(varBinds)


class SnmpPduSim:
    """A running simulated PDU.  Build it with :func:`start`."""

    def __init__(self, reactor, options):
        self.reactor = reactor
        self.options = options
        self.family = snmp_families.get(options.family)
        self.outlets = options.initial_states()
        self.fault = options.fault
        self.latency = options.latency
        self.switch_delay = options.switch_delay
        self.drop_rate = options.drop_rate
        self.datagrams = 0
        self.sets = []
        self._rng = random.Random(options.seed)
        self._timers = set()
        self._writers = set()
        self._engine = None
        self._socket = None
        self._sorted = None
        self.port = None

    # -- lifecycle ------------------------------------------------------

    def _listen(self):
        """Bind the UDP socket first so that port 0 is resolved at once."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((self.options.host, self.options.port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self.port = sock.getsockname()[1]
        return sock

    def _configure(self, sock):
        """Engine, transport, communities/users and responders."""
        snmp = engine.SnmpEngine()
        self._engine = snmp
        transport = _FaultyUdp(self).open_server_mode(sock=sock)
        config.add_transport(snmp, udp.DOMAIN_NAME, transport)
        self._add_communities(snmp)
        self._add_v3_user(snmp)
        ctx = context.SnmpContext(snmp)
        ctx.unregister_context_name(b"")
        ctx.register_context_name(b"", _OutletMib(self))
        for responder in (
            cmdrsp.GetCommandResponder,
            cmdrsp.NextCommandResponder,
            cmdrsp.BulkCommandResponder,
            cmdrsp.SetCommandResponder,
        ):
            responder(snmp, ctx)

    def _add_communities(self, snmp):
        o = self.options
        everything = (1, 3, 6)
        if o.write_community:
            config.add_v1_system(snmp, "rw", o.write_community, securityName=_RW_NAME)
            self._writers.add(_RW_NAME)
            for model in (1, 2):
                config.add_vacm_user(snmp, model, _RW_NAME, "noAuthNoPriv", everything, everything)
        if o.community and o.community != o.write_community:
            config.add_v1_system(snmp, "ro", o.community, securityName=_RO_NAME)
            for model in (1, 2):
                # the empty write view does not stop pysnmp 7; _OutletMib does
                config.add_vacm_user(snmp, model, _RO_NAME, "noAuthNoPriv", everything)

    def _add_v3_user(self, snmp):
        o = self.options
        if not o.v3_user:
            return
        auth = o.auth_protocol if o.auth_key else "none"
        priv = o.priv_protocol if o.priv_key else "none"
        config.add_v3_user(
            snmp, o.v3_user,
            AUTH_PROTOCOLS[auth], o.auth_key,
            PRIV_PROTOCOLS[priv], o.priv_key,
        )
        level = "noAuthNoPriv" if auth == "none" else ("authNoPriv" if priv == "none" else "authPriv")
        config.add_vacm_user(snmp, 3, o.v3_user, level, (1, 3, 6), (1, 3, 6))
        self._writers.add(o.v3_user)

    def stop(self):
        """Stop answering, cancel pending switches, close the socket; a Deferred."""
        for call in list(self._timers):
            if call.active():
                call.cancel()
        self._timers.clear()
        if self._engine is not None:
            self._engine.close_dispatcher()
            self._engine = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        # let asyncio run the transport's connection_lost before we return
        return defer.Deferred.fromFuture(asyncio.ensure_future(asyncio.sleep(0)))

    # -- faults and latency ---------------------------------------------

    def _call_later(self, delay, fn, *args):
        """A tracked reactor timer, so :meth:`stop` leaves none behind."""
        def run():
            self._timers.discard(call)
            fn(*args)

        call = self.reactor.callLater(delay, run)
        self._timers.add(call)
        return call

    def _on_datagram(self, deliver):
        self.datagrams += 1
        if self.fault == "hang":
            return
        if self.fault == "drop" and self._rng.random() < self.drop_rate:
            return
        if self.latency > 0:
            self._call_later(self.latency, deliver)
        else:
            deliver()

    # -- the outlet table ------------------------------------------------

    def _instances(self):
        """``{oid: (kind, outlet)}`` for every OID served, kind 'status' or a Command."""
        fam, unit = self.family, self.options.unit
        table = {}
        for n in self.outlets:
            for cmd in (fam.on, fam.off, fam.reboot):
                if cmd is not None:
                    table[fam.command_instance(cmd, unit, n)] = (cmd, n)
            table[fam.status_instance(unit, n)] = ("status", n)
        return table

    def _table(self):
        if self._sorted is None:
            table = self._instances()
            self._sorted = (table, sorted(table))
        return self._sorted

    def _value(self, oid):
        """The Integer32 served at ``oid``, or None if nothing is there."""
        table, _ = self._table()
        entry = table.get(oid)
        if entry is None:
            return None
        kind, n = entry
        fam, state = self.family, self.outlets[n]
        if kind == "status" or fam.status_oid == kind.oid:
            try:
                return rfc1902.Integer32(fam.raw_of(state))
            except KeyError:
                return rfc1902.Integer32(-1)
        if fam.on.oid != fam.off.oid:
            return rfc1902.Integer32(-1)  # Eaton: no command pending
        return rfc1902.Integer32(fam.on.value if state == PowerState.ON else fam.off.value)

    def _next_oid(self, oid):
        _, ordered = self._table()
        for candidate in ordered:
            if candidate > oid:
                return candidate
        return None

    def _plan_set(self, oid, value, idx):
        """Validate one SET varbind; return the action applying it."""
        table, _ = self._table()
        entry = table.get(oid)
        if entry is None:
            raise smi_error.NoCreationError(name=oid, idx=idx)
        kind, n = entry
        fam = self.family
        commands = [c for c in (fam.on, fam.off, fam.reboot) if c is not None and c.oid == oid[: len(c.oid)]]
        if kind == "status" and not commands:
            raise smi_error.NotWritableError(name=oid, idx=idx)
        try:
            raw = int(value)
        except (TypeError, ValueError):
            raise smi_error.WrongTypeError(name=oid, idx=idx) from None
        if fam.on.oid != fam.off.oid:
            return self._plan_delayed(commands[0], n, raw, oid, idx)
        for cmd in commands:
            if cmd.value == raw:
                return lambda: self._apply(cmd, n, 0.0)
        raise smi_error.WrongValueError(name=oid, idx=idx)

    def _plan_delayed(self, cmd, n, raw, oid, idx):
        """Eaton-style command objects: the value is a delay in seconds."""
        if raw < -1 or raw > 99999:
            raise smi_error.WrongValueError(name=oid, idx=idx)
        if raw == -1:
            return lambda: None
        return lambda: self._apply(cmd, n, float(raw))

    def _apply(self, cmd, n, extra_delay):
        """Record a SET and change the outlet after the switching delay."""
        fam = self.family
        self.sets.append((n, cmd.object, cmd.value))
        delay = self.switch_delay + extra_delay
        if cmd is fam.reboot:
            self._switch_later(delay, n, PowerState.OFF)
            self._switch_later(delay + max(self.switch_delay, 0.01), n, PowerState.ON)
        else:
            self._switch_later(delay, n, PowerState.ON if cmd is fam.on else PowerState.OFF)

    def _switch_later(self, delay, n, state):
        if delay <= 0:
            self.outlets[n] = state
        else:
            self._call_later(delay, self.outlets.__setitem__, n, state)


async def _start(reactor, options):
    sim = SnmpPduSim(reactor, options)
    sock = sim._listen()
    try:
        sim._configure(sock)
    except Exception:
        await defer.Deferred.fromFuture(asyncio.ensure_future(asyncio.sleep(0)))
        sim.stop()
        raise
    return sim


def start(reactor, options):
    """
    Start a simulated PDU on ``options.host``/``options.port`` (port 0 picks
    a free one).  A Deferred firing with the running :class:`SnmpPduSim`.
    Must run under the asyncio reactor (pysnmp needs the running loop).
    """
    if not isinstance(options, SimOptions):
        options = options_from_args(options)
    return defer.ensureDeferred(_start(reactor, options))
