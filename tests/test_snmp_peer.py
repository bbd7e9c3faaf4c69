"""
The ``snmp`` driver against a standard peer: net-snmp's ``snmpd`` emulating
an APC rPDU (see :mod:`tests.snmppeer`).  Skipped when snmpd is absent
(``apt-get install snmpd``).  Prints the time of each operation.
"""

import time

from twisted.internet import defer, reactor
from twisted.trial import unittest

from powerctl.drivers.base import sleep
from powerctl.drivers.errors import AuthenticationError, PowerTimeout, ProtocolError
from powerctl.drivers.snmp import SCHEMA, SnmpDriverType
from powerctl.power import PowerState
from tests import snmppeer
from tests.test_snmp_driver import FAST, V3_AUTH, V3_PRIV, inline


class NetSnmpTests(unittest.TestCase):
    if snmppeer.SNMPD is None:
        skip = "net-snmp snmpd not installed (apt-get install snmpd)"

    def setUp(self):
        self.peer = snmppeer.NetSnmpPeer(outlets=8, auth=V3_AUTH, priv=V3_PRIV).start()
        self.addCleanup(self.peer.stop)
        self.peer.wait_listening()
        self.driver_type = SnmpDriverType(reactor, FAST)
        self.addCleanup(self.driver_type.close)
        return defer.ensureDeferred(self.ready())

    async def ready(self, limit=5.0):
        """snmpd starts the pass_persist script lazily: wait until it answers."""
        started = time.monotonic()
        drv = self.driver_type.bind(self.settings())
        while True:
            try:
                await drv.query()
                print(f"\n  snmpd ready after {1000 * (time.monotonic() - started):.0f} ms")
                return
            except (ProtocolError, PowerTimeout):
                if time.monotonic() - started > limit:
                    raise
                await sleep(reactor, 0.05)

    def settings(self, **params):
        return SCHEMA.validate({
            "host": "127.0.0.1", "port": self.peer.port, "family": "apc-rpdu", "outlet": 2,
            "write_community": "private", "timeout": 0.5, "retries": 1, **params,
        })

    async def timed(self, label, d):
        started = time.monotonic()
        result = await d
        print(f"\n  snmpd {label}: {1000 * (time.monotonic() - started):.1f} ms")
        return result

    async def round_trip(self, **params):
        drv = self.driver_type.bind(self.settings(**params))
        tag = params.get("version", "2c")
        self.assertEqual(await self.timed(f"v{tag} query", drv.query()), PowerState.OFF)
        self.assertEqual(await self.timed(f"v{tag} on (verified)", drv.on()), PowerState.ON)
        self.assertEqual(await self.timed(f"v{tag} query", drv.query()), PowerState.ON)
        self.assertEqual(await self.timed(f"v{tag} off (verified)", drv.off()), PowerState.OFF)

    @inline
    async def test_v2c(self):
        await self.round_trip()

    @inline
    async def test_v1(self):
        await self.round_trip(version="1")

    @inline
    async def test_v3_auth_priv(self):
        await self.round_trip(version="3", user="ops", auth_protocol="sha", auth_key=V3_AUTH,
                              priv_protocol="aes", priv_key=V3_PRIV)

    @inline
    async def test_all_outlets_one_request(self):
        states = await self.timed("query 8 outlets in one GET",
                                  self.driver_type.query_outlets(self.settings(), range(1, 9)))
        self.assertEqual(states, {n: PowerState.OFF for n in range(1, 9)})
        walked = await self.timed("walk outlet status column",
                                  self.driver_type.query_outlets(self.settings()))
        self.assertEqual(walked, states)

    @inline
    async def test_read_only_community_cannot_write(self):
        drv = self.driver_type.bind(self.settings(write_community="public"))
        with self.assertRaises(AuthenticationError) as cm:
            await drv.on()
        print(f"\n  snmpd read-only SET refused: {cm.exception}")

    @inline
    async def test_wrong_community_times_out(self):
        with self.assertRaises(PowerTimeout):
            await self.driver_type.bind(self.settings(community="nope", retries=0)).query()

    @inline
    async def test_v3_wrong_key(self):
        drv = self.driver_type.bind(self.settings(version="3", user="ops", auth_key="wrong-key-1",
                                                  priv_protocol="aes", priv_key=V3_PRIV))
        with self.assertRaises(AuthenticationError):
            await drv.query()
