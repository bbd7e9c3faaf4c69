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


#: The commands a pserv sends the region, each with hostile but well-formed
#: arguments: unknown names, stale or absurd ids, values at AMP's size limit.
BIG = "x" * 60_000
HOSTILE_CALLS = [
    (commands.Register, dict(cluster="c9", name="pserv-z", version=BIG, instance="i")),
    (commands.Register, dict(cluster="", name="", version="", instance="")),
    (commands.Recover, dict(after_op=-5, after_node=BIG)),
    (commands.Recover, dict(after_op=2**63, after_node="\u0000")),
    (commands.Recover, dict(after_op=0, after_node="", changed_since=-1)),
    (commands.Recover, dict(after_op=0, after_node="", changed_since=2**70)),
    (commands.ReportOutcome, dict(operation_id=999_999, outcome="succeeded",
                                  observed_state="on", agent="", error="", coalesced_into=0,
                                  superseded_by=0, epoch=1)),
    (commands.ReportOutcome, dict(operation_id=2**63, outcome="bogus", observed_state=BIG,
                                  agent=BIG[:30000], error="", coalesced_into=-1,
                                  superseded_by=2**70, epoch=-1)),
    (commands.ReportOutcomes, dict(reports=[
        {"operation_id": 999_999, "outcome": "succeeded", "observed_state": "on"},
        {"operation_id": 1, "outcome": "succeeded", "observed_state": "on"},
        {"operation_id": 2**63, "outcome": "bogus", "observed_state": BIG[:20000]},
        {"operation_id": "1", "outcome": "failed", "detail": [1]}, None, []], epoch=1)),
    (commands.ReportOutcomes, dict(reports={"operation_id": 1}, epoch=2**63)),
    (commands.ReportOutcomes, dict(reports=[{"operation_id": 1, "outcome": "failed",
                                             "error": "e" * 100}] * 400, epoch=-1)),
    (commands.ReportPowerState, dict(states=[{"node": "ghost", "state": "on"}], epoch=1)),
    (commands.ReportPowerState, dict(states={"node": "n1"}, epoch=2**63)),
    (commands.ReportPowerState, dict(states=["n1", 7, None, {"node": 5, "state": []}],
                                     epoch=1)),
    (commands.ReportPowerState, dict(states=[{"node": "y" * 20, "state": "on"}] * 1200,
                                     epoch=1)),
    (commands.Heartbeat, dict(actions_in_flight=-1)),
    (commands.Heartbeat, dict(actions_in_flight=2**63)),
    (commands.ReleaseNodes, dict(nodes=["ghost", "n1", BIG[:50000]])),
    (commands.ReleaseNodes, dict(nodes={"n1": True})),
    (commands.ReleaseLease, dict()),
]


class EveryCommandTests(SystemMixin, DatabaseMixin, unittest.TestCase):
    """
    Every command a pserv may send, with unknown names, stale ids, missing
    and oversized arguments, before and after authentication: each gets
    one of its declared answers, the connection survives (or is closed on
    purpose before authentication), no traceback is logged, and the nodes
    and the journal are untouched.
    """

    timeout = 120

    def setUp(self):
        super().setUp()
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    client = RegionSideTests.client
    authenticate = RegionSideTests.authenticate

    def snapshot(self):
        with psycopg2.connect(self.dsn) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT (SELECT json_agg(n ORDER BY name) FROM nodes n)::text,"
                           " (SELECT json_agg(o ORDER BY id) FROM power_ops o)::text,"
                           " (SELECT count(*) FROM pservs), (SELECT count(*) FROM leases)")
            row = cursor.fetchone()
        conn.close()
        return row

    async def outcome(self, p, command, kwargs):
        """'ok', or the declared error code the region answered."""
        try:
            await p.callRemote(command, **kwargs)
            return "ok"
        except amp.RemoteAmpError as e:
            self.fail(f"{command.__name__}: undeclared error {e.errorCode!r}: {e}")
        except Exception as e:
            shown = {k: (v if len(repr(v)) < 80 else f"<{len(repr(v))} chars>")
                     for k, v in kwargs.items()}
            self.assertIn(type(e), command.allErrors,
                          f"{command.__name__}({shown}): {str(e)[:300]!r}")
            return command.allErrors[type(e)].decode()

    async def test_every_command_hostile_before_and_after_authentication(self):
        await self.start_region()
        await self.add_node("n1")
        await self.power("n1", "on")  # an operation stays pending: no pserv runs it
        before = self.snapshot()

        # Before authentication: every command is refused, the connection stays.
        p = await self.client()
        for command, kwargs in HOSTILE_CALLS:
            self.assertEqual(await self.outcome(p, command, kwargs), "NOT_AUTHENTICATED",
                             command.__name__)
        with self.assertRaises(amp.UnhandledCommand):
            await p.callRemoteString(b"DropTables", table=b"nodes")
        self.assertFalse(p.lost.called)
        self.assertEqual(self.snapshot(), before)

        # Authenticated but not registered: the leased commands say so.
        await self.authenticate(p)
        for command, kwargs in HOSTILE_CALLS:
            if command is not commands.Register:
                self.assertIn(await self.outcome(p, command, kwargs),
                              ("UNKNOWN_PSERV", "BAD_ARGUMENTS"), command.__name__)
        self.assertFalse(p.lost.called)
        self.assertEqual(self.snapshot(), before)

        # Registered (in a cluster of its own, so it owns nothing of c1):
        # stale ids, unknown nodes, absurd values, missing arguments.
        await p.callRemote(commands.Register, cluster="c9", name="pserv-z", version="t",
                           instance="i-1")
        registered = self.snapshot()
        self.assertEqual(registered[:2], before[:2])
        answers = {}
        for command, kwargs in HOSTILE_CALLS:
            answers.setdefault(command.__name__, []).append(
                await self.outcome(p, command, kwargs))
            self.assertFalse(p.lost.called, command.__name__)
            if command is commands.ReleaseLease:  # it gave its lease up: take a new one
                p = await self.client()
                await self.authenticate(p)
                await p.callRemote(commands.Register, cluster="c9", name="pserv-z",
                                   version="t", instance="i-1")
        for command in {c for c, _ in HOSTILE_CALLS if c.arguments}:
            with self.assertRaises(amp.RemoteAmpError, msg=command.__name__) as raised:
                await p.callRemoteString(command.commandName)  # every argument missing
            self.assertEqual(raised.exception.errorCode, b"BAD_ARGUMENTS", command.__name__)
        with self.assertRaises(amp.UnhandledCommand):
            await p.callRemoteString(b"DropTables", table=b"nodes")
        self.assertFalse(p.lost.called)
        after = self.snapshot()
        self.assertEqual(after[:2], before[:2], answers)  # nodes and journal untouched
        # the same pserv; one lease more: the one taken again after ReleaseLease
        self.assertEqual((after[2], after[3]), (registered[2], registered[3] + 1))
        self.assertEqual([formatEvent(e) for e in self.events if "log_failure" in e], [],
                         answers)
        # absurd cursors and counts are the peer's error, not a database one
        self.assertEqual(answers["Recover"], ["BAD_ARGUMENTS"] * 4)
        self.assertEqual(answers["Heartbeat"], ["BAD_ARGUMENTS"] * 2)
        self.assertEqual(answers["ReportOutcome"][1], "STALE_EPOCH")


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


#: The commands a region sends a pserv, each with hostile but well-formed arguments.
PSERV_HOSTILE_CALLS = [
    (commands.PowerOn, dict(operation_id=2**63, node="\x00", epoch=-1,
                            power={"mode": "single", "agents": []})),
    (commands.PowerCycle, dict(operation_id=1, node="x" * 50_000, power=[], epoch=1)),
    (commands.PowerQuery, dict(operation_id=-5, node="ghost", epoch=2**70,
                               power={"agents": [{"driver": "nope"}]})),
    (commands.PowerOff, dict(operation_id=7, node="n1", epoch=1, power="off")),
    (commands.PowerSoftOff, dict(operation_id=8, node="", epoch=0, power=None)),
    (commands.PowerMany, dict(operations=[{"id": 2**63, "node": "n1", "action": "on",
                                           "power": {"mode": "single", "agents": []}}],
                              epoch=-1)),
    (commands.PowerMany, dict(operations={"id": 1}, epoch=1)),
    (commands.PowerMany, dict(operations=[{"id": 1, "node": "n1", "action": "fence",
                                           "power": {}}, None, "x"], epoch=2**70)),
    (commands.PowerMany, dict(operations=[{"id": -1, "node": "\x00", "action": "on"},
                                          {"id": True, "node": "x" * 300, "action": "on",
                                           "power": [], "lockouts": "all",
                                           "circuit": ["c"]}], epoch=0)),
    (commands.PowerMany, dict(operations=[{"id": i, "node": f"n{i}", "action": "on",
                                           "power": {"agents": [{"driver": "nope"}]}}
                                          for i in range(1, 300)], epoch=1)),
    (commands.ForgetNode, dict(node="ghost", reason=BIG)),
    (commands.ForgetNode, dict(node="\x00", reason="")),
    (commands.Refresh, dict()),
    (commands.CancelOperation, dict(operation_id=999_999, reason="r")),
    (commands.CancelOperation, dict(operation_id=-1, reason=BIG)),
    (commands.ConfirmOperation, dict(operation_id=999_999, state="on")),
    (commands.ConfirmOperation, dict(operation_id=1, state="sideways")),
    (commands.ListActions, dict(after_node="\x00", limit=-1)),
    (commands.ListActions, dict(after_node=BIG, limit=2**70, node="ghost")),
    (commands.ListSlots, dict(after_priority=-(2**70), after_seq=-1, limit=0)),
    (commands.ListSlots, dict(after_priority=2**63, after_seq=2**63, limit=2**63,
                              node=BIG)),
]


class RegionPeer(Client):
    """The region as far as a refresh needs it: nothing to recover."""

    @commands.Recover.responder
    def recover(self, after_op, after_node, changed_since=None):
        return {"operations": [], "nodes": [], "after_op": -1, "after_node": "", "done": True}


class EveryPservCommandTests(unittest.TestCase):
    """
    The pserv side of the same sweep, in memory: every command a region
    sends, hostile, to a pserv whose region authenticated and to one whose
    region did not.  Declared answers only, no traceback, the connection
    kept (or closed on purpose before authentication), and no power action
    started.
    """

    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def serve(self, authenticated):
        clock = task.Clock()
        executor = DriverExecutor(catalogue())
        self.registry = PowerActionRegistry(executor, clock)
        link = RegionLink()
        self.pserv = Pserv(self.registry, executor, link.report)

        class Peer(PservProtocol):
            def connectionMade(self):
                amp.AMP.connectionMade(self)  # no hand-shake: we play the region
                self.gate.open = authenticated

        self.pair = connect(Peer(self.pserv, link, None, SECRET, clock), RegionPeer(), clock)
        return self.pair.client

    def outcome(self, client, command, kwargs):
        result = self.pair.answer(client.callRemote(command, **kwargs))
        if isinstance(result, dict):
            return "ok"
        self.assertIn(result.type, command.allErrors,
                      f"{command.__name__}: {str(result.value)[:300]!r}")
        return command.allErrors[result.type].decode()

    def sweep(self, authenticated):
        client = self.serve(authenticated)
        answers = {}
        for command, kwargs in PSERV_HOSTILE_CALLS:
            if client.lost.called:
                break
            answers.setdefault(command.__name__, []).append(
                self.outcome(client, command, kwargs))
        self.assertEqual([formatEvent(e) for e in self.events if "log_failure" in e], [],
                         answers)
        self.assertEqual(self.registry.activity(), [])  # nothing runs, nothing waits
        return client, answers

    def test_authenticated_region_hostile_commands(self):
        client, answers = self.sweep(authenticated=True)
        self.assertFalse(client.lost.called, answers)
        self.assertEqual(len(sum(answers.values(), [])), len(PSERV_HOSTILE_CALLS))
        for command in {c for c, _ in PSERV_HOSTILE_CALLS if c.arguments}:
            failure = self.pair.answer(client.callRemoteString(command.commandName))
            self.assertEqual(failure.value.errorCode, b"BAD_ARGUMENTS", command.__name__)
        self.assertFalse(client.lost.called)

    def test_unauthenticated_region_is_refused_every_command(self):
        client, answers = self.sweep(authenticated=False)
        self.assertEqual(len(sum(answers.values(), [])), len(PSERV_HOSTILE_CALLS))
        self.assertFalse(client.lost.called)
        for name, got in answers.items():
            self.assertEqual(set(got), {"NOT_AUTHENTICATED"}, name)
