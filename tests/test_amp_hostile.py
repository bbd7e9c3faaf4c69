"""
Hostile or broken AMP boxes never cost a connection more than their own
answer: a bug in a responder answers ``INTERNAL_ERROR`` (on the region and
on the pserv), a box missing an argument ``BAD_ARGUMENTS``; a peer that does
not authenticate in time, or sends a box missing an argument before it has,
is disconnected on purpose with one log line.

What needs no database runs in memory (``powerctl.testing.amp``) on a
Clock: the authentication timeout is advanced to the tick, not waited for.
"""

import psycopg2
from twisted.internet import address, defer, endpoints, reactor, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols import amp
from twisted.trial import unittest

from powerctl.pserv.core import Pserv
from powerctl.pserv.executor import DriverExecutor
from powerctl.pserv.link import PservProtocol, RegionLink
from powerctl.region import peers
from powerctl.region.core import Region
from powerctl.region.rpc import RegionProtocol
from powerctl.registry import PowerActionRegistry
from powerctl.rpc import auth, commands
from powerctl.testing.amp import connect
from powerctl.testing.region import FakeLeases, FakeRegionStore
from tests.pg import DatabaseMixin
from tests.system import SECRET, SystemMixin, catalogue


class Client(amp.AMP):
    """A hand-driven peer that notes when its connection is lost."""

    def __init__(self):
        super().__init__()
        self.lost = defer.Deferred()

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.lost.callback(None)


def every_command():
    return [c for c in vars(commands).values()
            if isinstance(c, type) and issubclass(c, amp.Command) and c is not amp.Command
            and c.commandName]


class DeclaredErrorsTests(unittest.TestCase):
    def test_every_command_declares_the_box_errors(self):
        for command in every_command():
            self.assertEqual(command.allErrors.get(commands.InternalError), b"INTERNAL_ERROR",
                             command.__name__)
            self.assertEqual(command.allErrors.get(commands.BadArguments), b"BAD_ARGUMENTS",
                             command.__name__)


class RegionSideTests(SystemMixin, DatabaseMixin, unittest.TestCase):
    """A raw AMP client against a real region."""

    def setUp(self):
        super().setUp()
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    async def client(self):
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.rpc_port)
        p = await endpoints.connectProtocol(endpoint, Client())
        self.addCleanup(p.transport.loseConnection)
        return p

    async def authenticate(self, p):
        challenge = await p.callRemote(commands.Challenge)
        await p.callRemote(commands.Authenticate, proof=auth.proof(SECRET, challenge["nonce"]),
                           nonce=auth.new_nonce())

    def count(self, table):
        with psycopg2.connect(self.dsn) as conn, conn.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {table}")
            [(n,)] = cursor.fetchall()
        conn.close()
        return n

    def texts(self, fragment):
        return [formatEvent(e) for e in self.events if fragment in formatEvent(e)]
    async def test_a_bug_answers_internal_error_and_the_connection_stays(self):
        await self.start_region()
        store = self.region.region.store
        real = store.clusters.register_pserv

        def broken(*args, **kwargs):
            raise RuntimeError("a bug in the store")

        store.clusters.register_pserv = broken
        p = await self.client()
        await self.authenticate(p)
        register = dict(cluster="c1", name="pserv-x", version="t", instance="i-1")
        with self.assertRaises(commands.InternalError) as raised:
            await p.callRemote(commands.Register, **register)
        self.assertNotIn("a bug in the store", str(raised.exception))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.count("pservs") + self.count("leases"), 0)
        self.assertFalse(p.lost.called)

        # the same connection goes on: the fixed store registers it
        store.clusters.register_pserv = real
        answer = await p.callRemote(commands.Register, **register)
        self.assertGreater(answer["epoch"], 0)
        self.assertGreater((await p.callRemote(commands.Heartbeat, actions_in_flight=0))["lease"],
                           0)
        self.assertFalse(p.lost.called)
    async def test_bad_boxes_after_authentication_are_refused_not_fatal(self):
        await self.start_region()
        p = await self.client()
        await self.authenticate(p)
        # a missing argument: one log line, BAD_ARGUMENTS, still connected
        with self.assertRaises(amp.RemoteAmpError) as raised:
            await p.callRemoteString(b"Register", cluster=b"c1", name=b"x")
        self.assertEqual(raised.exception.errorCode, b"BAD_ARGUMENTS")
        self.assertIn("version", str(raised.exception))
        # a malformed JSON argument (refused while parsing): BAD_ARGUMENTS too
        with self.assertRaises(amp.RemoteAmpError) as raised:
            await p.callRemoteString(b"ReportPowerState", states=b"{not json", epoch=b"1")
        self.assertEqual(raised.exception.errorCode, b"BAD_ARGUMENTS")
        self.assertFalse(p.lost.called)
        self.assertEqual(len(self.texts("without argument(s) version, instance")), 1)
        self.assertEqual([e for e in self.events if "log_failure" in e], [])
        await p.callRemote(commands.Register, cluster="c1", name="x", version="t",
                           instance="i")
    async def test_a_box_missing_an_argument_before_authentication_closes(self):
        await self.start_region()
        p = await self.client()
        with self.assertRaises(amp.RemoteAmpError) as raised:
            await p.callRemoteString(b"Authenticate", proof=b"00")
        self.assertEqual(raised.exception.errorCode, b"BAD_ARGUMENTS")
        await p.lost.addTimeout(5, reactor)
        [line] = self.texts("before authenticating: closing the connection")
        self.assertIn("Authenticate without argument(s) nonce", line)
        self.assertEqual([e for e in self.events if "log_failure" in e], [])
        self.assertEqual(await self.connected_pservs(), [])


class AuthTimeoutTests(unittest.TestCase):
    """The region's authentication deadline, in memory on a Clock (no database needed)."""

    def setUp(self):
        self.clock = task.Clock()
        store = FakeRegionStore()
        self.region = Region("r1", store, SECRET, self.clock, leases=FakeLeases(store))
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def client(self, host="10.0.0.7"):
        pair = connect(RegionProtocol(self.region), Client(), self.clock,
                       peer=address.IPv4Address("TCP", host, 40000))
        self.addCleanup(lambda: pair.disconnect() if pair.connected else None)
        return pair

    def answer(self, pair, d):
        result = pair.answer(d)
        self.assertIsInstance(result, dict)
        return result

    def test_unauthenticated_connections_are_closed_after_the_timeout(self):
        silent, talker = self.client(), self.client()
        challenge = self.answer(talker, talker.client.callRemote(commands.Challenge))
        self.answer(talker, talker.client.callRemote(
            commands.Authenticate, proof=auth.proof(SECRET, challenge["nonce"]),
            nonce=auth.new_nonce()))
        self.clock.advance(RegionProtocol.auth_timeout - 0.001)
        silent.flush()
        self.assertFalse(silent.client.lost.called)  # not a tick early
        self.clock.advance(0.001)
        silent.flush()
        self.assertTrue(silent.client.lost.called)
        lines = [formatEvent(e) for e in self.events
                 if "did not authenticate within" in formatEvent(e)]
        self.assertEqual(len(lines), 1)
        self.assertIn(f"within {RegionProtocol.auth_timeout} s", lines[0])
        # An authenticated one stays, and is served.
        self.clock.advance(RegionProtocol.auth_timeout * 10)
        talker.flush()
        self.assertFalse(talker.client.lost.called)
        self.assertEqual(self.answer(talker, talker.client.callRemote(
            commands.Register, cluster="c1", name="x", version="t", instance="i"))["epoch"], 1)


    def test_unauthenticated_connections_are_limited_per_address(self):
        limit = peers.MAX_PER_ADDRESS
        silent = [self.client() for _ in range(limit)]
        pending = self.region.pending_peers
        host = "10.0.0.7"
        self.assertEqual(pending.pending(host), limit)
        # the next ones from that address are closed at once, logged once
        over = [self.client() for _ in range(3)]
        for pair in over:
            pair.flush()
            self.assertTrue(pair.client.lost.called)
        lines = [formatEvent(e) for e in self.events
                 if "connections that have not authenticated" in formatEvent(e)]
        self.assertEqual(len(lines), 1)
        self.assertIn(f"holds {limit} connections", lines[0])
        self.assertEqual(pending.pending(host), limit)  # the refused ones never counted
        self.assertFalse(silent[0].client.lost.called)
        other = self.client("10.0.0.8")  # another address is not held up
        other.flush()
        self.assertFalse(other.client.lost.called)
        self.assertEqual(pending.pending("10.0.0.8"), 1)
        # one that authenticates frees its place at once (and is served)
        pair = silent[0]
        challenge = self.answer(pair, pair.client.callRemote(commands.Challenge))
        self.answer(pair, pair.client.callRemote(
            commands.Authenticate, proof=auth.proof(SECRET, challenge["nonce"]),
            nonce=auth.new_nonce()))
        self.assertEqual(pending.pending(host), limit - 1)
        admitted = self.client()
        admitted.flush()
        self.assertFalse(admitted.client.lost.called)
        # the timeout closes the silent ones, and nothing stays counted
        self.clock.advance(RegionProtocol.auth_timeout)
        for p in silent[1:] + [admitted]:
            p.flush()
            self.assertTrue(p.client.lost.called)
        self.assertEqual(pending.pending(host), 0)
        self.assertFalse(pair.client.lost.called)
        # under the limit again: a later flood is logged again
        for _ in range(limit + 1):
            self.client()
        lines = [formatEvent(e) for e in self.events
                 if "connections that have not authenticated" in formatEvent(e)]
        self.assertEqual(len(lines), 2)

    def test_the_limit_is_per_address(self):
        pending = peers.PendingPeers(limit=2)
        self.assertTrue(pending.admit("10.0.0.1"))
        self.assertTrue(pending.admit("10.0.0.1"))
        self.assertFalse(pending.admit("10.0.0.1"))
        self.assertTrue(pending.first_refusal("10.0.0.1"))
        self.assertFalse(pending.first_refusal("10.0.0.1"))
        self.assertTrue(pending.admit("10.0.0.2"))  # another address is not held up
        pending.leave("10.0.0.1")
        self.assertEqual(pending.pending("10.0.0.1"), 1)
        self.assertTrue(pending.admit("10.0.0.1"))
        self.assertFalse(pending.admit("10.0.0.1"))
        self.assertTrue(pending.first_refusal("10.0.0.1"))  # it went under the limit since
        for _ in range(2):
            pending.leave("10.0.0.1")
        pending.leave("10.0.0.2")
        self.assertEqual((pending.pending("10.0.0.1"), pending.pending("10.0.0.2")), (0, 0))
        self.assertEqual(pending._count, {})


class PservSideTests(unittest.TestCase):
    """A raw AMP client playing the region against a pserv's protocol, in memory."""

    def serve(self):
        clock = task.Clock()
        executor = DriverExecutor(catalogue())
        registry = PowerActionRegistry(executor, clock)
        link = RegionLink()
        self.pserv = Pserv(registry, executor, link.report)

        class Authenticated(PservProtocol):
            def connectionMade(self):
                amp.AMP.connectionMade(self)  # no hand-shake: we play the region
                self.gate.open = True

        self.pair = connect(Authenticated(self.pserv, link, None, SECRET, clock), Client(),
                            clock)
        return self.pair.client

    def test_a_bug_answers_internal_error_and_the_connection_stays(self):
        client = self.serve()

        def broken(*args, **kwargs):
            raise RuntimeError("a bug in the pserv")

        self.pserv.cancel = broken
        failure = self.pair.answer(
            client.callRemote(commands.CancelOperation, operation_id=1, reason="r"))
        self.assertTrue(failure.check(commands.InternalError), failure)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        answer = self.pair.answer(client.callRemote(commands.ListActions, after_node="",
                                                    limit=10))
        self.assertEqual((answer["nodes"], answer["done"]), ([], True))
        failure = self.pair.answer(
            client.callRemoteString(b"ConfirmOperation", operation_id=b"1"))
        self.assertTrue(failure.check(amp.RemoteAmpError), failure)
        self.assertEqual(failure.value.errorCode, b"BAD_ARGUMENTS")
        self.assertFalse(client.lost.called)
