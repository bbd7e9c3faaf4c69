"""
A whole powerctl system in the test process: a real PostgreSQL database,
a region (API + AMP on loopback), one or more pservs connected to it over
real AMP, and a simulated Redfish service holding the nodes.
"""

import json
import os
import socket
import tempfile

import treq
from twisted.internet import reactor, task
from twisted.web.client import HTTPConnectionPool

from powerctl.config import PservConfig, RegionConfig
from powerctl.drivers.catalogue import DriverCatalogue
from powerctl.drivers.interface import Timing
from powerctl.drivers.manual import ManualDriverType
from powerctl.drivers.redfish import RedfishDriverType
from powerctl.drivers.webhook import WebhookDriverType
from powerctl.pserv.service import PservService
from powerctl.region.service import RegionService
from powerctl.sim.redfish import RedfishSimulator, SimSystem

SECRET = b"a-test-secret-of-enough-bytes"
TIMING = Timing(timeout=2.0, retries=1, backoff=0.1, verify_timeout=15.0,
                poll_interval=0.1, soft_off_timeout=2.0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def catalogue():
    return DriverCatalogue([RedfishDriverType(reactor, timing=TIMING),
                            ManualDriverType(reactor),
                            WebhookDriverType(reactor, timing=TIMING)])


#: The name of the admin token the tests' requests carry (their requester).
ADMIN = "test-admin"


def admin_token(dsn, name=ADMIN):
    """Create an admin API token in the database at ``dsn``; the token."""
    import psycopg2

    from powerctl.region.tokens import create_token_sync

    conn = psycopg2.connect(dsn)
    try:
        return create_token_sync(conn, name, "admin", created_by="tests")[1]
    finally:
        conn.close()


def key_file(test):
    """A fresh key file for secrets at rest (mode 0600), removed after ``test``."""
    import shutil

    from powerctl.region.vault import create_key_file

    directory = tempfile.mkdtemp()
    test.addCleanup(shutil.rmtree, directory, True)
    path = os.path.join(directory, "secrets.key")
    create_key_file(path)
    return path


async def wait_until(predicate, timeout=20.0, interval=0.05):
    """Poll an async ``predicate`` until it returns something truthy."""
    deadline = reactor.seconds() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {value!r})")
        await task.deferLater(reactor, interval, lambda: None)


class SystemMixin:
    """For a trial TestCase that also mixes in ``tests.pg.DatabaseMixin``."""

    nodes = ("node1", "node2")
    switch_delay = 0.2

    def setUp(self):
        super().setUp()
        self.sim = RedfishSimulator(
            reactor, [SimSystem(id=n, name=n) for n in self.nodes],
            username="admin", password="sim-pass", delay=self.switch_delay).start()
        self.addCleanup(self.sim.stop)
        fd, self.secret_file = tempfile.mkstemp()
        os.write(fd, SECRET)
        os.close(fd)
        self.addCleanup(os.unlink, self.secret_file)
        self.rpc_port = free_port()
        self.rpc_listen = f"tcp:{self.rpc_port}:interface=127.0.0.1"
        self.rpc_dial = f"tcp:host=127.0.0.1:port={self.rpc_port}"
        self.region = None
        self.pservs = []
        self.http = HTTPConnectionPool(reactor, persistent=False)
        self.token = admin_token(self.dsn)
        self.key_file = key_file(self)

    def auth_headers(self):
        """The headers that make a request the test's admin's."""
        return {b"Authorization": [f"Bearer {self.token}".encode()]}

    def make_catalogue(self):
        """The drivers of the region and the pservs (a test may add its own)."""
        return catalogue()

    #: Lease settings of the test fleet (short, so take-overs are quick).
    lease = 30.0
    lease_margin = 10.0

    async def start_region(self, name="region-test", rpc_listen=None, main=True,
                           **settings):
        settings = RegionConfig(
            name=name, database=self.dsn,
            api_endpoint="tcp:0:interface=127.0.0.1",
            rpc_endpoint=rpc_listen or self.rpc_listen,
            secret_file=self.secret_file, heartbeat_timeout=10.0, lease=self.lease,
            key_file=self.key_file, **settings)
        region = RegionService(settings, SECRET, reactor, self.make_catalogue())
        region.startService()
        await region.whenReady()
        region.api = f"http://127.0.0.1:{region.api_port.getHost().port}"
        if main:
            self.region = region
            self.api = region.api
        self.addCleanup(self._stop_region, region)
        return region

    def _stop_region(self, region):
        if region.running:
            return region.stopService()

    async def stop_region(self):
        await self.region.stopService()

    async def start_pserv(self, name="pserv-a", secret=SECRET, poll_interval=3600,
                          cluster="c1", regions=None):
        settings = PservConfig(
            name=name, cluster=cluster,
            regions=regions or (self.rpc_dial,),
            secret_file=self.secret_file, poll_interval=poll_interval,
            heartbeat_interval=min(1.0, self.lease / 6), lease_margin=self.lease_margin)
        pserv = PservService(settings, secret, reactor, self.make_catalogue())
        pserv.startService()
        self.pservs.append(pserv)
        self.addCleanup(lambda: pserv.running and pserv.stopService())
        return pserv

    async def connected_pservs(self):
        body = await self.get("/v1/clusters")
        return [p["name"] for c in body for p in c.get("pservs", []) if p.get("connected")]

    async def cli(self, *argv):
        """Run the ``powerctl`` CLI in-process against this region's API."""
        import io

        from powerctl.cli import Context
        from powerctl.cli.main import run as run_cli

        out, err = io.StringIO(), io.StringIO()
        ctx = Context(reactor, stdout=out, stderr=err, env={"POWERCTL_TOKEN": self.token})
        code = await run_cli([*argv, "--api", self.api], reactor, ctx)
        return code, out.getvalue(), err.getvalue()

    # -- REST helpers -----------------------------------------------------

    async def call(self, method, path, body=None, api=None):
        kwargs = {"headers": self.auth_headers()}
        if body is not None:
            kwargs["data"] = json.dumps(body).encode()
            kwargs["headers"][b"Content-Type"] = [b"application/json"]
        response = await treq.request(method, (api or self.api) + path, pool=self.http,
                                      **kwargs)
        content = await treq.content(response)
        return response.code, (json.loads(content) if content else None)

    async def get(self, path):
        code, body = await self.call("GET", path)
        assert code == 200, (path, code, body)
        return body

    def redfish_power(self, system, sim=None, password="sim-pass"):
        sim = sim or self.sim
        return {"mode": "single", "agents": [{"driver": "redfish", "params": {
            "url": sim.url, "username": "admin", "password": password, "system": system}}]}

    async def add_node(self, name, cluster="c1", power=None):
        code, body = await self.call("POST", "/v1/nodes", {
            "name": name, "cluster": cluster,
            "power": power or self.redfish_power(name),
        })
        assert code == 201, (code, body)
        return body

    async def power(self, name, action, api=None):
        code, body = await self.call("POST", f"/v1/nodes/{name}/power", {"action": action},
                                     api=api)
        assert code == 202, (code, body)
        return body

    async def op(self, op_id):
        return await self.get(f"/v1/power_ops/{op_id}")

    async def wait_op(self, op_id, states=("succeeded", "failed", "superseded", "cancelled"),
                      timeout=20.0):
        async def done():
            op = await self.op(op_id)
            return op if op["state"] in states else None

        return await wait_until(done, timeout)

    async def open_ops(self):
        ops = await self.get("/v1/power_ops?limit=1000")
        return [o for o in ops if o["state"] in ("pending", "running")]
