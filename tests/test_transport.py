"""
Issue 10, TLS by default between hosts: plain AMP on a non-loopback address
is refused at start-up with the documented message (unless
``allow_plaintext_rpc``), and a region and a pserv talk TLS end to end with
the certificates of ``powerctl admin tls init``.
"""

import io
import os
import tempfile

from twisted.internet import reactor
from twisted.trial import unittest

from powerctl.cli import Context
from powerctl.cli.main import run as run_cli
from powerctl.config import ConfigError, PservConfig, RegionConfig
from powerctl.pserv.service import PservService
from powerctl.region.service import RegionService
from powerctl.rpc import transport
from tests.pg import DatabaseMixin
from tests.system import SECRET, SystemMixin, catalogue, wait_until


class PureTests(unittest.TestCase):
    def test_servers(self):
        for ok in ("tcp:5250:interface=127.0.0.1", "tcp:0:interface=\\:\\:1",
                   "tcp:5250:interface=localhost", "ssl:5250:privateKey=k:certKey=c",
                   "unix:/run/powerctl.sock"):
            self.assertIsNone(transport.server_problem(ok), ok)
        for bad in ("tcp:5250", "tcp:5250:interface=0.0.0.0", "tcp:5250:interface=10.0.0.1",
                    "tcp6:5250:interface=\\:\\:"):
            problem = transport.server_problem(bad)
            self.assertIn("plain TCP", problem, bad)
            self.assertIn("allow_plaintext_rpc", problem)

    def test_clients(self):
        for ok in ("tcp:host=127.0.0.1:port=5250", "tcp:localhost:5250",
                   "tls:host=region1:port=5250:trustRoots=/etc/powerctl/ca",
                   "unix:path=/run/powerctl.sock"):
            self.assertIsNone(transport.client_problem(ok), ok)
        for bad in ("tcp:host=region1:port=5250", "tcp:10.0.0.5:5250"):
            self.assertIn("plain TCP", transport.client_problem(bad), bad)


class StartupTests(DatabaseMixin, unittest.TestCase):
    def test_a_pserv_refuses_to_dial_a_remote_region_in_plain_text(self):
        settings = PservConfig(regions=("tcp:host=10.9.8.7:port=5250",))
        with self.assertRaises(ConfigError) as e:
            PservService(settings, SECRET, reactor, catalogue())
        self.assertIn("tcp:host=10.9.8.7:port=5250", str(e.exception))
        self.assertIn("BMC passwords", str(e.exception))
        allowed = PservConfig(regions=("tcp:host=10.9.8.7:port=5250",),
                              allow_plaintext_rpc=True)
        PservService(allowed, SECRET, reactor, catalogue())
    async def test_a_region_refuses_plain_rpc_on_every_interface(self):
        key_dir = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, key_dir)
        settings = RegionConfig(name="r", database=self.dsn,
                                api_endpoint="tcp:0:interface=127.0.0.1",
                                rpc_endpoint="tcp:0", secret_file="/nonexistent",
                                key_file=os.path.join(key_dir, "k"))
        region = RegionService(settings, SECRET, reactor, catalogue())
        region.startService()
        with self.assertRaises(ConfigError) as e:
            await region.whenReady()
        self.assertIn("rpc_endpoint tcp:0 listens in plain TCP on every interface",
                      str(e.exception))
        self.flushLoggedErrors(ConfigError)
        await region.stopService()
        self.assertIsNone(region.rpc_port)


class TlsEndToEndTests(SystemMixin, DatabaseMixin, unittest.TestCase):
    async def test_region_and_pserv_over_tls_with_tls_init_certificates(self):
        directory = os.path.join(tempfile.mkdtemp(), "tls")
        self.addCleanup(__import__("shutil").rmtree, os.path.dirname(directory))
        out, err = io.StringIO(), io.StringIO()
        code = await run_cli(["admin", "tls", "init", directory, "--name", "localhost",
                              "--port", str(self.rpc_port)], reactor,
                             Context(reactor, stdout=out, stderr=err, env={}))
        self.assertEqual(code, 0, err.getvalue())
        listen, client_ca, dial = [
            line.split(None, 1)[1] for line in out.getvalue().splitlines()
            if line.startswith(("rpc_endpoint ", "rpc_client_ca ", "regions "))]
        self.assertEqual(os.stat(os.path.join(directory, "region.key")).st_mode & 0o777, 0o600)
        self.assertTrue(listen.startswith("ssl:"))
        self.assertEqual(os.stat(os.path.join(directory, "pserv.key")).st_mode & 0o777, 0o600)
        await self.start_region(rpc_listen=listen + ":interface=127.0.0.1",
                                rpc_client_ca=client_ca)
        await self.start_pserv(regions=(dial,))
        await wait_until(self.connected_pservs)
        await self.add_node("node1")
        op = await self.power("node1", "on")
        self.assertEqual((await self.wait_op(op["id"]))["state"], "succeeded")

    async def test_mutual_tls_refuses_a_pserv_without_a_client_certificate(self):
        """
        With ``rpc_client_ca`` the region's TLS handshake requires a
        certificate of that CA: a peer trusting the region but showing none
        (or one of another CA) never reaches the AMP hand-shake.
        """
        from twisted.internet import endpoints

        from powerctl import tlsinit

        base = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, base)
        paths = tlsinit.init(os.path.join(base, "tls"), ["localhost"])
        other = tlsinit.init(os.path.join(base, "other"), ["localhost"])
        listen, dial, client_ca = tlsinit.endpoints(paths, self.rpc_port, "localhost")
        await self.start_region(rpc_listen=listen + ":interface=127.0.0.1",
                                rpc_client_ca=client_ca)
        without = dial.split(":certificate=")[0]
        _, foreign, _ = tlsinit.endpoints(
            dict(paths, pserv_cert=other["pserv_cert"], pserv_key=other["pserv_key"]),
            self.rpc_port, "localhost")

        async def greeting(description):
            """What the region's AMP says to a Challenge over ``description``."""
            from twisted.protocols import amp

            from powerctl.rpc import commands

            proto = await endpoints.connectProtocol(
                endpoints.clientFromString(reactor, description), amp.AMP())
            try:
                d = proto.callRemote(commands.Challenge)
                d.addTimeout(5, reactor)
                return await d
            finally:
                proto.transport.loseConnection()

        self.assertTrue((await greeting(dial))["nonce"])
        for refused in (without, foreign):
            with self.assertRaises(Exception):
                await greeting(refused)

    def test_rpc_client_ca_needs_an_ssl_endpoint(self):
        from powerctl.config import ConfigError, RegionConfig
        from powerctl.rpc.transport import check_server

        settings = RegionConfig(rpc_endpoint="tcp:5250:interface=127.0.0.1",
                                rpc_client_ca="/nonexistent")
        with self.assertRaises(ConfigError) as e:
            check_server(settings)
        self.assertIn("ssl:", str(e.exception))
