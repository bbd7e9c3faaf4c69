"""
Issue 10, per-cluster pserv credentials: a pserv holding rack c1's
credential is admitted to c1 only and never receives c2's BMC passwords; a
revoked credential is disconnected; the shared secret still admits every
cluster; ``powerctl admin pserv-credential`` and the credential file.
"""

import io
import json
import os

import psycopg2
from twisted.internet import defer, endpoints, reactor
from twisted.protocols import amp
from twisted.trial import unittest

from powerctl.cli import Context
from powerctl.cli.main import run as run_cli
from powerctl.config import ConfigError, PservConfig
from powerctl.pserv.service import PservService
from powerctl.region import pservcreds
from powerctl.region.vault import load_key_file
from powerctl.rpc import auth, commands, credentials
from tests.pg import DatabaseMixin
from tests.system import SystemMixin, wait_until


class PureTests(unittest.TestCase):
    def test_admission(self):
        self.assertTrue(pservcreds.admits(pservcreds.Admission(b"k"), "any"))
        admitted = pservcreds.Admission(b"k", "c1", "id1")
        self.assertTrue(pservcreds.admits(admitted, "c1"))
        self.assertFalse(pservcreds.admits(admitted, "c2"))

    def test_credential_file(self):
        made = credentials.new_credential()
        self.assertEqual(credentials.parse(made.text()), made)
        self.assertNotIn(made.secret.decode(), repr(made))
        self.assertEqual(credentials.key_of(made), made.secret)
        self.assertEqual(credentials.key_of(b"shared"), b"shared")
        self.assertEqual(credentials.authenticate_arguments(made), {"credential": made.id})
        self.assertEqual(credentials.authenticate_arguments(b"shared"), {})
        for bad in ("", "pcc1:x", "pcc2:id:" + "s" * 20, "pcc1:id:short"):
            with self.assertRaises(credentials.CredentialError):
                credentials.parse(bad)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(made.text())
        os.chmod(path, 0o644)
        with self.assertRaises(credentials.CredentialError) as e:
            credentials.read_credential_file(path)
        self.assertIn("accessible by other users", str(e.exception))
        os.chmod(path, 0o600)
        self.assertEqual(credentials.read_credential_file(path), made)
        settings = PservConfig(credential_file=path + ".missing")
        with self.assertRaises(ConfigError):
            PservService.from_config(settings, reactor=reactor, catalogue=object())


class CredentialSystemTests(SystemMixin, DatabaseMixin, unittest.TestCase):
    nodes = ("node1", "node2")

    def credential(self, cluster):
        conn = psycopg2.connect(self.dsn)
        try:
            return pservcreds.create_sync(conn, load_key_file(self.key_file), cluster)
        finally:
            conn.close()

    async def client(self, secret):
        """An AMP client authenticated with ``secret`` (shared secret or credential)."""
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.rpc_port)
        p = await endpoints.connectProtocol(endpoint, amp.AMP())
        self.addCleanup(p.transport.loseConnection)
        p.lost = defer.Deferred()
        p.connectionLost = lambda reason: p.lost.called or p.lost.callback(None)
        challenge = await p.callRemote(commands.Challenge)
        mine = auth.new_nonce()
        key = credentials.key_of(secret)
        answer = await p.callRemote(commands.Authenticate,
                                    proof=auth.proof(key, challenge["nonce"]), nonce=mine,
                                    **credentials.authenticate_arguments(secret))
        self.assertTrue(auth.valid(key, mine, answer["proof"]))
        return p

    async def setup_fleet(self):
        await self.start_region()
        await self.add_node("node1", cluster="c1")  # Redfish password "sim-pass"
        await self.add_node("node2", cluster="c2", power=self.redfish_power(
            "node2", password="c2-only-pass"))
    async def test_a_credential_admits_its_cluster_only(self):
        await self.setup_fleet()
        rack1 = self.credential("c1")
        # for c2: refused, and the connection is closed; it never registered
        p = await self.client(rack1)
        with self.assertRaises(commands.AuthenticationFailed):
            await p.callRemote(commands.Register, cluster="c2", name="intruder",
                               version="test", instance="i1")
        await p.lost.addTimeout(5, reactor)
        self.assertNotIn("intruder", [p["name"] for c in await self.get("/v1/clusters")
                                      for p in c.get("pservs", [])])
        # for c1: admitted, and recovery carries c1's nodes alone
        p = await self.client(rack1)
        await p.callRemote(commands.Register, cluster="c1", name="pserv-c1",
                           version="test", instance="i2")
        pages = []
        after_op, after_node, done = 0, "", False
        while not done:
            page = await p.callRemote(commands.Recover, after_op=after_op,
                                      after_node=after_node)
            pages.append(page)
            after_op, after_node, done = page["after_op"], page["after_node"], page["done"]
        text = json.dumps(pages, default=str)
        self.assertIn("node1", text)
        self.assertNotIn("node2", text)
        self.assertNotIn("c2-only-pass", text)
        # an unknown credential id, or a wrong secret for a real one, is refused
        for forged in (credentials.Credential("nope", b"x" * 43),
                       credentials.Credential(rack1.id, b"y" * 43)):
            with self.assertRaises(commands.AuthenticationFailed):
                await self.client(forged)
    async def test_a_real_pserv_with_a_credential_works_and_is_cut_off_when_revoked(self):
        await self.setup_fleet()
        rack1 = self.credential("c1")
        await self.start_pserv(name="pserv-c1", secret=rack1, cluster="c1")
        await wait_until(self.connected_pservs)
        op = await self.power("node1", "on")
        self.assertEqual((await self.wait_op(op["id"]))["state"], "succeeded")
        # revoked: the region closes its connection at the next heartbeat and
        # refuses it from then on
        code, out, err = await self.admin("pserv-credential", "revoke", rack1.id,
                                          "--database", self.dsn)
        self.assertEqual(code, 0, err)

        async def gone():
            return not await self.connected_pservs()

        await wait_until(gone)
        self.flushLoggedErrors(commands.AuthenticationFailed)  # the pserv says so, loudly
        with self.assertRaises(commands.AuthenticationFailed):
            await self.client(rack1)  # and it cannot come back
        # the shared secret still admits a pserv (single-tenant sites), to any cluster
        await self.start_pserv(name="pserv-shared", cluster="c2")
        await wait_until(self.connected_pservs)
        self.assertEqual(await self.connected_pservs(), ["pserv-shared"])
        self.flushLoggedErrors(commands.AuthenticationFailed)
    async def test_the_admin_command_prints_a_credential_file(self):
        await self.setup_fleet()
        code, out, err = await self.admin("pserv-credential", "create", "--cluster", "c1",
                                          "--database", self.dsn, "--key-file", self.key_file)
        self.assertEqual(code, 0, err)
        made = credentials.parse(out)
        self.assertIn(made.id, err)
        self.assertNotIn(made.secret.decode(), err)
        conn = psycopg2.connect(self.dsn)
        with conn.cursor() as cur:
            cur.execute("SELECT secret FROM pserv_credentials")
            [(stored,)] = cur.fetchall()
        conn.close()
        self.assertNotIn(made.secret.decode(), stored)  # sealed by the region's key
        p = await self.client(made)
        await p.callRemote(commands.Register, cluster="c1", name="pserv-file",
                           version="test", instance="i3")
        code, out, err = await self.admin("pserv-credential", "list", "--database", self.dsn)
        self.assertIn(made.id, out)
        self.assertNotIn(made.secret.decode(), out)

    async def admin(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        ctx = Context(reactor, stdout=out, stderr=err, env={})
        code = await run_cli(["admin", *argv], reactor, ctx)
        return code, out.getvalue(), err.getvalue()
