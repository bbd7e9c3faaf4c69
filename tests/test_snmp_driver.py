"""
The ``snmp`` driver against the simulated PDU over real UDP on loopback:
schema checks, every family, every SNMP version, errors, cancellation,
and the all-outlets-in-one-request query.
"""

import functools
import os

from twisted.internet import defer, reactor
from twisted.trial import unittest

from powerctl.drivers import snmp_families
from powerctl.drivers.base import sleep
from powerctl.drivers.errors import (
    AuthenticationError,
    InvalidParameters,
    PowerTimeout,
    ProtocolError,
    UnsupportedError,
)
from powerctl.drivers.interface import Timing
from powerctl.drivers.snmp import SCHEMA, SnmpDriverType
from powerctl import powerdoc
from powerctl.power import PowerState
from powerctl.sim import snmp as simsnmp

# The call bound is generous (a SET and its verification took over 1 s at a
# load of 10 in a CI run); SNMP requests time out in 0.3 s (settings below),
# so a silent agent still fails fast, and test_bounded shows the bound.
FAST = Timing(timeout=3.0, retries=0, backoff=0.01, backoff_max=0.01,
              verify_timeout=4.0, poll_interval=0.02, soft_off_timeout=1.0)
V3_AUTH = "authpass-123"
V3_PRIV = "privpass-456"


def inline(f):
    """Run an ``async def`` test method as a Deferred-returning one."""

    @functools.wraps(f)
    def wrapper(self, *a, **kw):
        return defer.ensureDeferred(f(self, *a, **kw))

    return wrapper


def open_fds():
    """How many file descriptors this process has open (Linux)."""
    return len(os.listdir("/proc/self/fd"))


class SimMixin:
    """Starts simulators and a driver type, and always cleans them up."""

    timing = FAST

    def setUp(self):
        self.driver_type = SnmpDriverType(reactor, self.timing)
        self.addCleanup(self.driver_type.close)

    async def sim(self, **options):
        sim = await simsnmp.start(reactor, simsnmp.SimOptions(**options))
        self.addCleanup(sim.stop)
        return sim

    def settings(self, sim, **params):
        base = {
            "host": "127.0.0.1", "port": sim.port, "family": sim.options.family,
            "outlet": 1, "write_community": "private", "timeout": 0.3, "retries": 0,
        }
        base.update(params)
        return SCHEMA.validate(base)

    def driver(self, sim, **params):
        return self.driver_type.bind(self.settings(sim, **params))


class SchemaTests(unittest.TestCase):
    """Bad parameters are refused before any I/O."""

    GOOD = {"host": "127.0.0.1", "family": "apc-rpdu", "outlet": 1}

    def invalid(self, name, **params):
        with self.assertRaises(InvalidParameters) as cm:
            SCHEMA.validate({**self.GOOD, **params})
        self.assertEqual(cm.exception.parameter, name)
        return cm.exception

    def test_defaults(self):
        s = SCHEMA.validate(dict(self.GOOD))
        self.assertEqual((s["port"], s["version"], s["community"], s["unit"]), (161, "2c", "public", 1))
        self.assertIsNone(s["write_community"])

    def test_required(self):
        for name in ("host", "family", "outlet"):
            params = dict(self.GOOD)
            del params[name]
            with self.assertRaises(InvalidParameters) as cm:
                SCHEMA.validate(params)
            self.assertEqual(cm.exception.parameter, name)

    def test_single_field_rules(self):
        self.invalid("family", family="nope")
        self.invalid("outlet", outlet=0)
        self.invalid("port", port=70000)
        self.invalid("version", version="2")
        self.invalid("host", host="not a host!")
        self.invalid("auth_protocol", auth_protocol="sha1024")
        self.invalid("priv_protocol", priv_protocol="rot13")
        self.invalid("bogus", bogus=1)

    def test_v3_needs_user(self):
        self.invalid("user", version="3", auth_key=V3_AUTH)

    def test_v3_auth_key_required_and_long_enough(self):
        self.invalid("auth_key", version="3", user="u")
        e = self.invalid("auth_key", version="3", user="u", auth_key="short")
        self.assertNotIn("short", str(e))  # secrets never in messages

    def test_v3_priv_rules(self):
        self.invalid("priv_key", version="3", user="u", auth_key=V3_AUTH, priv_protocol="aes")
        self.invalid("priv_protocol", version="3", user="u", auth_protocol="none", priv_protocol="aes",
                     priv_key=V3_PRIV)

    def test_v3_no_auth_allowed_explicitly(self):
        SCHEMA.validate({**self.GOOD, "version": "3", "user": "u", "auth_protocol": "none"})

    def test_unit_only_for_families_with_units(self):
        self.invalid("unit", unit=2)
        SCHEMA.validate({**self.GOOD, "family": "raritan-px2", "unit": 2})

    def test_redaction(self):
        s = SCHEMA.validate({**self.GOOD, "community": "c0mm", "write_community": "wr1te"})
        shown = powerdoc.redact({"agents": [{"driver": "snmp", "params": s}]},
                                {"snmp": SCHEMA.secrets})
        self.assertNotIn("c0mm", repr(shown))
        self.assertNotIn("wr1te", repr(shown))


class _Ipv6Pdu:
    """A minimal agent on ::1 for the community GET path (the simulator is IPv4 only)."""

    def __init__(self):
        import asyncio

        from powerctl.drivers import snmp_ber

        self.asyncio, self.ber = asyncio, snmp_ber
        self.transport = None

    async def start(self):
        loop = self.asyncio.get_running_loop()
        ber = self.ber
        owner = self

        class Protocol(self.asyncio.DatagramProtocol):
            def datagram_received(self, data, address):
                version, community, request_id, oids = ber.decode_get(data)
                owner.transport.sendto(ber.encode_response(
                    version, community, request_id,
                    [(ber.encode_oid(oid), 1) for oid in oids]), address)

        self.transport, _ = await loop.create_datagram_endpoint(
            Protocol, local_addr=("::1", 0))
        return self.transport.get_extra_info("sockname")[1]


class Ipv6Tests(unittest.TestCase):
    @inline
    async def test_community_get_over_ipv6(self):
        pdu = _Ipv6Pdu()
        port = await defer.Deferred.fromFuture(pdu.asyncio.ensure_future(pdu.start()))
        self.addCleanup(pdu.transport.close)
        dt = SnmpDriverType(reactor, FAST)
        self.addCleanup(dt.close)
        settings = SCHEMA.validate({"host": "::1", "port": port, "family": "apc-rpdu",
                                    "outlet": 1, "timeout": 0.5, "retries": 0})
        self.assertEqual(await dt.query_outlets(settings, [1, 2, 3]),
                         dict.fromkeys((1, 2, 3), PowerState.ON))


class SharingTests(unittest.TestCase):
    """A pserv binds one driver per outlet: what is per PDU is kept once."""

    def test_outlets_of_one_pdu_share_target_capabilities_and_limiter_handle(self):
        from powerctl.drivers.bmclimit import BmcLimiter, BmcLimits

        dt = SnmpDriverType(reactor, FAST, limiter=BmcLimiter(reactor, BmcLimits(1, 0.0)))
        good = {"host": "127.0.0.1", "family": "apc-rpdu"}
        a, b = (dt.bind(SCHEMA.validate({**good, "outlet": n})) for n in (1, 2))
        other = dt.bind(SCHEMA.validate({**good, "outlet": 3, "community": "other"}))
        self.assertIs(a.target, b.target)
        self.assertIs(a.capabilities, b.capabilities)
        self.assertIs(a.bmc, b.bmc)
        self.assertEqual((a.outlet, b.outlet), (1, 2))
        self.assertIsNot(other.target, a.target)  # other credentials: another target
        self.assertIs(other.bmc, a.bmc)  # the same device all the same


class FamilyTests(SimMixin, unittest.TestCase):
    """on / off / query / cycle for every family, over UDP."""

    async def exercise(self, family):
        unit = 2 if snmp_families.get(family).index.has_unit else 1
        sim = await self.sim(family=family, outlets=4, initial="off", unit=unit, switch_delay=0.03)
        drv = self.driver(sim, outlet=3, unit=unit)
        self.assertEqual(await drv.query(), PowerState.OFF)
        self.assertEqual(await drv.on(), PowerState.ON)
        self.assertEqual(sim.outlets[3], PowerState.ON)
        self.assertEqual(sim.outlets[2], PowerState.OFF)
        self.assertEqual(await drv.off(), PowerState.OFF)
        await drv.on()
        self.assertEqual(await drv.cycle(), PowerState.ON)
        self.assertEqual([s[0] for s in sim.sets], [3, 3, 3, 3, 3])
        with self.assertRaises(UnsupportedError):
            await drv.soft_off()
        self.assertEqual(drv.capabilities.native_cycle, snmp_families.get(family).reboot is not None)

    def test_every_family(self):
        async def all_families():
            for family in snmp_families.NAMES:
                await self.exercise(family)

        return defer.ensureDeferred(all_families())

    @inline
    async def test_native_reboot_command(self):
        sim = await self.sim(family="raritan-px2", outlets=2, initial="on")
        drv = self.driver(sim, outlet=2)
        from powerctl.drivers.base import Command

        await drv.send(Command.CYCLE)
        self.assertEqual(sim.sets, [(2, "switchingOperation", 2)])

    @inline
    async def test_baytech_cannot_reboot_natively(self):
        sim = await self.sim(family="baytech-mrp", outlets=2)
        from powerctl.drivers.base import Command

        with self.assertRaises(UnsupportedError):
            await self.driver(sim).send(Command.CYCLE)

    @inline
    async def test_missing_outlet_is_protocol_error(self):
        sim = await self.sim(outlets=2)
        with self.assertRaises(ProtocolError) as cm:
            await self.driver(sim, outlet=9).query()
        self.assertIn("wrong family, unit or outlet", str(cm.exception))


class VersionTests(SimMixin, unittest.TestCase):
    @inline
    async def test_v1(self):
        sim = await self.sim(family="apc-masterswitch", initial="off")
        drv = self.driver(sim, version="1", outlet=2)
        self.assertEqual(await drv.on(), PowerState.ON)
        self.assertEqual(await self.driver_type.query_outlets(self.settings(sim, version="1")),
                         {n: (PowerState.ON if n == 2 else PowerState.OFF) for n in range(1, 9)})

    @inline
    async def test_one_read_write_community(self):
        sim = await self.sim(community="private", write_community="private")
        drv = self.driver(sim, community="private", write_community=None)
        self.assertEqual(await drv.on(), PowerState.ON)

    async def v3(self, auth, priv):
        sim = await self.sim(family="cyberpower", v3_user="ops", auth_protocol=auth, auth_key=V3_AUTH,
                             priv_protocol=priv, priv_key=V3_PRIV if priv != "none" else None)
        drv = self.driver(sim, version="3", user="ops", auth_protocol=auth, auth_key=V3_AUTH,
                          priv_protocol=priv, priv_key=V3_PRIV if priv != "none" else None, timeout=1.0)
        self.assertEqual(await drv.on(), PowerState.ON)
        self.assertEqual(await drv.off(), PowerState.OFF)

    @inline
    async def test_v3_sha_aes(self):
        await self.v3("sha", "aes")

    @inline
    async def test_v3_sha256_aes256(self):
        await self.v3("sha256", "aes256")

    @inline
    async def test_v3_md5_des(self):
        await self.v3("md5", "des")

    @inline
    async def test_v3_auth_no_priv(self):
        await self.v3("sha512", "none")


class ErrorTests(SimMixin, unittest.TestCase):
    @inline
    async def test_read_only_community_refused_on_set(self):
        sim = await self.sim(initial="off")
        drv = self.driver(sim, write_community="public")
        with self.assertRaises(AuthenticationError) as cm:
            await drv.on()
        self.assertIn("noAccess", str(cm.exception))
        self.assertIn("write community", str(cm.exception))
        self.assertNotIn("public", str(cm.exception))
        self.assertEqual(sim.outlets[1], PowerState.OFF)
        self.assertEqual(sim.sets, [])

    @inline
    async def test_read_only_community_refused_v1(self):
        sim = await self.sim(initial="off")
        with self.assertRaises(AuthenticationError):
            await self.driver(sim, version="1", write_community="public").on()
        self.assertEqual(sim.sets, [])

    @inline
    async def test_wrong_community_times_out_quickly(self):
        sim = await self.sim()
        with self.assertRaises(PowerTimeout) as cm:
            await self.driver(sim, community="wrong").query()
        # Ended by the one 0.3 s SNMP request, not by the 3 s call bound.
        self.assertIn("no response within 0.3s x1", str(cm.exception))
        self.assertIn("wrong community", str(cm.exception))
        self.assertNotIn("'wrong'", str(cm.exception))

    @inline
    async def test_v3_unknown_user(self):
        sim = await self.sim(v3_user="ops", auth_key=V3_AUTH)
        # Refused by the agent's answer (a timeout would be PowerTimeout).
        with self.assertRaises(AuthenticationError):
            await self.driver(sim, version="3", user="intruder", auth_key=V3_AUTH).query()

    @inline
    async def test_v3_wrong_key(self):
        sim = await self.sim(v3_user="ops", auth_key=V3_AUTH)
        good = self.driver(sim, version="3", user="ops", auth_key=V3_AUTH)
        self.assertEqual(await good.query(), PowerState.OFF)
        bad = self.driver(sim, version="3", user="ops", auth_key="not-the-key")
        with self.assertRaises(AuthenticationError) as cm:
            await bad.query()
        self.assertNotIn("not-the-key", str(cm.exception))

    @inline
    async def test_hang_is_power_timeout(self):
        sim = await self.sim(fault="hang")
        with self.assertRaises(PowerTimeout) as cm:
            await self.driver(sim).query()
        self.assertIn("no response within 0.3s x1", str(cm.exception))  # not retried on
        self.assertGreaterEqual(sim.datagrams, 1)

    @inline
    async def test_error_status_is_protocol_error(self):
        sim = await self.sim(fault="error")
        with self.assertRaises(ProtocolError) as cm:
            await self.driver(sim).query()
        self.assertIn("genErr", str(cm.exception))

    @inline
    async def test_drops_are_retried(self):
        sim = await self.sim(fault="drop", drop_rate=0.5, seed=3)
        drv = self.driver(sim, timeout=0.1, retries=6)
        for _ in range(5):
            self.assertEqual(await drv.query(), PowerState.OFF)

    @inline
    async def test_nothing_listening(self):
        sim = await self.sim()
        settings = self.settings(sim)
        await sim.stop()
        with self.assertRaises(PowerTimeout):
            await self.driver_type.bind(settings).query()


class CancellationTests(SimMixin, unittest.TestCase):
    @inline
    async def test_cancel_mid_call_leaves_nothing(self):
        sim = await self.sim(fault="hang")
        drv = self.driver(sim, timeout=5.0)
        # warm up: the shared engine opens its one socket on first use
        healthy = await self.sim()
        await self.driver(healthy).query()
        fds, calls = open_fds(), len(reactor.getDelayedCalls())
        for _ in range(5):
            d = drv.query()
            await sleep(reactor, 0.05)
            d.cancel()
            with self.assertRaises(defer.CancelledError):
                await d
        await sleep(reactor, 0)
        self.assertEqual(len(reactor.getDelayedCalls()), calls)
        self.assertEqual(open_fds(), fds)

    @inline
    async def test_a_call_cancelled_while_the_socket_opens_leaves_it_usable(self):
        import asyncio
        import socket

        async def cancel_then_use():
            first = asyncio.ensure_future(self.driver_type._socket(socket.AF_INET))
            await asyncio.sleep(0)  # it started opening the socket, and waits
            first.cancel()
            return await asyncio.wait_for(self.driver_type._socket(socket.AF_INET), 2.0)

        protocol = await defer.Deferred.fromFuture(asyncio.ensure_future(cancel_then_use()))
        self.assertIsNotNone(protocol.transport)
        sim = await self.sim()
        self.assertEqual(await self.driver(sim).query(), PowerState.OFF)

    @inline
    async def test_close_releases_the_socket(self):
        sim = await self.sim()
        baseline = open_fds()
        await self.driver(sim).query()
        self.assertEqual(open_fds(), baseline + 1)
        await self.driver_type.close()
        self.assertEqual(open_fds(), baseline)
        self.assertEqual(await self.driver(sim).query(), PowerState.OFF)  # reopens


class QueryOutletsTests(SimMixin, unittest.TestCase):
    @inline
    async def test_all_outlets_in_one_request(self):
        sim = await self.sim(family="servertech-sentry4", outlets=48, initial=",".join(
            "on" if n % 3 == 0 else "off" for n in range(1, 49)))
        settings = self.settings(sim)
        await self.driver_type.query_outlets(settings, [1])  # warm up
        before = sim.datagrams
        states = await self.driver_type.query_outlets(settings, range(1, 49))
        self.assertEqual(sim.datagrams - before, 1)
        self.assertEqual(states, dict(sim.outlets))

    @inline
    async def test_more_than_48_outlets_in_one_request(self):
        sim = await self.sim(outlets=60, initial=",".join(
            "on" if n % 2 else "off" for n in range(1, 61)))
        settings = self.settings(sim)
        await self.driver_type.query_outlets(settings, [1])  # warm up
        before = sim.datagrams
        states = await self.driver_type.query_outlets(settings, range(1, 61))
        self.assertEqual(sim.datagrams - before, 1)
        self.assertEqual(states, dict(sim.outlets))

    @inline
    async def test_too_big_splits_and_remembers_what_fits(self):
        # an agent with a small buffer: 20 outlets fit in GETs of 5 at most
        sim = await self.sim(outlets=20, initial=",".join(
            "on" if n % 3 else "off" for n in range(1, 21)), max_varbinds=5)
        settings = self.settings(sim)
        states = await self.driver_type.query_outlets(settings, range(1, 21))
        self.assertEqual(states, dict(sim.outlets))
        before = sim.datagrams  # the next sweep goes straight to GETs of 5
        states = await self.driver_type.query_outlets(settings, range(1, 21))
        self.assertEqual(states, dict(sim.outlets))
        self.assertEqual(sim.datagrams - before, 4)

    @inline
    async def test_silence_to_a_big_get_falls_back_to_48_at_a_time(self):
        # an agent that drops what it cannot hold: a GET of 60 APC outlets is
        # about 1.4 KB, one of 48 about 1.1 KB
        sim = await self.sim(outlets=60, initial="on", max_datagram=1200)
        settings = self.settings(sim)
        states = await self.driver_type.query_outlets(settings, range(1, 61))
        self.assertEqual(states, dict(sim.outlets))
        before = sim.datagrams  # remembered: the next sweep asks for 48, then 12
        self.assertEqual(await self.driver_type.query_outlets(settings, range(1, 61)),
                         dict(sim.outlets))
        self.assertEqual(sim.datagrams - before, 2)

    @inline
    async def test_a_silent_pdu_still_times_out(self):
        sim = await self.sim(outlets=60, fault="hang")
        with self.assertRaises(PowerTimeout):
            await self.driver_type.query_outlets(self.settings(sim), range(1, 61))

    @inline
    async def test_too_big_for_one_outlet_is_protocol_error(self):
        sim = await self.sim(outlets=4, max_varbinds=0)
        with self.assertRaises(ProtocolError) as caught:
            await self.driver_type.query_outlets(self.settings(sim), [1, 2, 3])
        self.assertIn("tooBig", str(caught.exception))

    @inline
    async def test_walk_without_outlet_list(self):
        sim = await self.sim(family="eaton-epdu", outlets=24, initial="on")
        states = await self.driver_type.query_outlets(self.settings(sim))
        self.assertEqual(states, dict(sim.outlets))

    @inline
    async def test_missing_outlets_are_unknown(self):
        sim = await self.sim(outlets=2, initial="on")
        states = await self.driver_type.query_outlets(self.settings(sim), [1, 2, 3])
        self.assertEqual(states, {1: PowerState.ON, 2: PowerState.ON, 3: PowerState.UNKNOWN})

    @inline
    async def test_bounded(self):
        sim = await self.sim(fault="hang")
        with self.assertRaises(PowerTimeout):
            await self.driver_type.query_outlets(self.settings(sim, timeout=30.0), [1, 2])
