"""
The real daemons: ``twistd -n powerctl-region`` and ``twistd -n
powerctl-pserv`` as separate processes, a real PostgreSQL and a simulated
Redfish service.  A pserv killed with SIGKILL mid-operation is replaced and
the fleet converges; SIGTERM stops a pserv promptly even with a BMC call
hanging.

Nothing here sleeps to synchronise or times a process: tests wait for
events (the API answers, the simulator received the call, the process
exited), and "promptly" is shown by what the pserv did, not how long it
took: its hanging call stopped when cancelled (the registry logs any that
does not stop within its bound) and it gave its lease back, which it does
only once quiet.
"""

import os
import signal
import subprocess
import sys

import psycopg2
from twisted.trial import unittest

from powerctl.testing.waiting import until
from tests.pg import DatabaseMixin
from tests.system import SystemMixin, free_port, wait_until

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class DaemonTests(SystemMixin, DatabaseMixin, unittest.TestCase):
    timeout = 120
    switch_delay = 2.0

    def spawn(self, name, *argv):
        path = os.path.join(self.mktemp_dir(), f"{name}.log")
        self.logs = getattr(self, "logs", {})
        self.logs[name] = path
        log = open(path, "wb")
        process = subprocess.Popen([TWISTD, "-n", "--pidfile=", *argv], stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.addCleanup(self._reap, process, log)
        return process

    def mktemp_dir(self):
        path = self.mktemp()
        os.makedirs(path, exist_ok=True)
        return path

    @staticmethod
    def _reap(process, log):
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()

    def start_region_daemon(self):
        self.api_port = free_port()
        self.api = f"http://127.0.0.1:{self.api_port}"
        return self.spawn(
            "region", "powerctl-region", "--name", "region-d", "--database", self.dsn,
            "--api-endpoint", f"tcp:{self.api_port}:interface=127.0.0.1",
            "--rpc-endpoint", f"tcp:{self.rpc_port}:interface=127.0.0.1",
            "--secret-file", self.secret_file, "--key-file", self.key_file)

    def start_pserv_daemon(self, name):
        return self.spawn(
            name, "powerctl-pserv", "--name", name, "--cluster", "c1",
            "--region", f"tcp:host=127.0.0.1:port={self.rpc_port}",
            "--secret-file", self.secret_file)

    async def api_up(self):
        try:
            await self.get("/v1/clusters")
            return True
        except Exception:
            return False

    async def exited(self, process, timeout=30):
        """Wait for ``process`` to exit (``timeout`` only turns a hang into a failure)."""
        await until(lambda: process.poll() is not None, timeout=timeout,
                    what=f"process {process.pid} to exit")
        return process.returncode

    def log_of(self, name):
        with open(self.logs[name]) as f:
            return f.read()

    def lease_released(self, pserv):
        """Whether ``pserv``'s lease was given back (not merely left to expire)."""
        with psycopg2.connect(self.dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT bool_and(released) FROM leases WHERE pserv = %s", (pserv,))
            released = cur.fetchone()[0]
        conn.close()
        return bool(released)

    async def test_pserv_killed_mid_operation_is_replaced_and_converges(self):
        self.start_region_daemon()
        await wait_until(self.api_up, timeout=30)
        first = self.start_pserv_daemon("pserv-1")
        await wait_until(self.connected_pservs, timeout=30)
        await self.add_node("node1")
        op = await self.power("node1", "on")

        async def running():
            return (await self.op(op["id"]))["state"] == "running"

        await wait_until(running)
        first.send_signal(signal.SIGKILL)
        await self.exited(first)
        self.assertEqual((await self.op(op["id"]))["state"], "running")
        self.start_pserv_daemon("pserv-2")
        done = await self.wait_op(op["id"], timeout=60)
        self.assertEqual((done["state"], done["pserv"]), ("succeeded", "pserv-2"))
        self.assertEqual(await self.open_ops(), [])
        node = await self.get("/v1/nodes/node1")
        self.assertEqual((node["desired_state"], node["power_state"]), ("on", "on"))

    async def test_sigterm_stops_a_pserv_promptly_with_a_call_hanging(self):
        region = self.start_region_daemon()
        await wait_until(self.api_up, timeout=30)
        pserv = self.start_pserv_daemon("pserv-1")
        await wait_until(self.connected_pservs, timeout=30)
        await self.add_node("node1")
        asked = len(self.sim.requests)
        self.sim.fault("hang")  # every request from now on hangs
        op = await self.power("node1", "off")
        await until(lambda: len(self.sim.requests) > asked,
                    what="the pserv's call to reach the BMC")  # now it hangs there
        pserv.send_signal(signal.SIGTERM)
        # twistd re-raises the signal that stopped it once it has shut down.
        self.assertIn(await self.exited(pserv), (0, -signal.SIGTERM))
        log = self.log_of("pserv-1")
        self.assertIn("Server Shut Down", log)
        # Prompt: the hanging call stopped when cancelled (the registry
        # would log one that did not stop within its bound), and the pserv
        # gave its lease back, which it does only once every device is quiet.
        self.assertNotIn("did not stop within", log)
        self.assertTrue(self.lease_released("pserv-1"))
        # Stopped, not finished: the operation stays open for the next pserv.
        self.assertEqual((await self.op(op["id"]))["state"], "running")
        region.send_signal(signal.SIGTERM)
        self.assertIn(await self.exited(region), (0, -signal.SIGTERM))
        self.assertIn("Server Shut Down", self.log_of("region"))
