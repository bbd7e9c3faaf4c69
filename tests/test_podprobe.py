"""
Pod manager status is kept current by probing: a live Redfish service is
online, a closed port is offline, and changes are recorded both ways.
"""

from twisted.internet import reactor
from twisted.trial import unittest
from txpostgres import txpostgres

from powerctl.region.podprobe import PodManagerProber
from powerctl.region.store import Store
from powerctl.sim.redfish import RedfishSimulator, SimSystem
from tests import tokens
from tests.pg import DatabaseMixin
from tests.system import catalogue, free_port


class ProbeTests(DatabaseMixin, unittest.TestCase):
    async def test_status_follows_reachability(self):
        pool = txpostgres.ConnectionPool(None, self.dsn, min=1)
        await pool.start()
        self.addCleanup(pool.close)
        store = Store(pool, catalogue(), vault=tokens.vault())
        sim = RedfishSimulator(reactor, [SimSystem(id="1", name="one")],
                               username="u", password="p").start()
        self.addCleanup(sim.stop)
        live = await store.pod_managers.create("chassis-a", sim.url, "u", "secret-pass")
        dead = await store.pod_managers.create(
            "chassis-b", f"http://127.0.0.1:{free_port()}", "u", "secret-pass")
        prober = PodManagerProber(store, reactor, timeout=2.0)
        self.addCleanup(prober.stopService)
        await prober.probe_all()
        self.assertEqual((await store.pod_managers.get(live["uuid"]))["status"], "online")
        self.assertEqual((await store.pod_managers.get(dead["uuid"]))["status"], "offline")
        await sim.stop()
        await prober.probe_all()
        self.assertEqual((await store.pod_managers.get(live["uuid"]))["status"], "offline")
