"""
The region's store against a real PostgreSQL (a fresh migrated database per
test): nodes, the journal, the AMP side's recovery queries, responsiveness,
pservs and clusters, pod managers.
"""

import datetime
import re

from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from txpostgres import txpostgres

from powerctl.power import ACTIONS, OP_STATES, POWER_STATES, TARGET_STATES
from powerctl.region.errors import Conflict, InvalidInput, NotFound
from powerctl.region.errors import PowerDocumentRefused
from powerctl.region.store import Recorded, Store
from tests import tokens
from tests.pg import DatabaseMixin
from tests.test_powerconfig import fake_catalogue


def ipmi(host="10.0.0.5", password="pw"):
    """A single-agent IPMI power document."""
    return {"mode": "single", "agents": [
        {"driver": "ipmi", "params": {"host": host, "password": password}}]}


def pod_agent(uuid, system="1"):
    """A single-agent document pointing at a redfish pod manager."""
    return {"agents": [{"driver": "redfish", "pod_manager": uuid, "params": {"system": system}}]}


def opened(node, agent=0):
    """An agent's parameters of a stored node, its secrets opened (they are sealed at rest)."""
    return tokens.vault().open_power(node["power"])["agents"][agent]["params"]


class StoreTestCase(DatabaseMixin, unittest.TestCase):
    """A started pool and a Store over it; ``self.sql`` reads the database."""

    grace = 60.0

    def setUp(self):
        super().setUp()
        self.pool = txpostgres.ConnectionPool(None, self.dsn, min=3)
        self.addCleanup(self.pool.close)
        self.store = self.make_store()
        return self.pool.start()

    def make_store(self, **kwargs):
        kwargs.setdefault("responsive_grace", self.grace)
        kwargs.setdefault("vault", tokens.vault())
        return Store(self.pool, fake_catalogue(), **kwargs)

    def sql(self, query, *args):
        return self.pool.runQuery(query, args or None)

    async def connect(self):
        conn = txpostgres.Connection(reactor=reactor)
        await conn.connect(self.dsn)
        self.addCleanup(conn.close)
        return conn


class VocabularyTests(StoreTestCase):
    async def test_the_schema_checks_allow_exactly_the_vocabulary(self):
        """The migrations spell the words out; they must be powerctl.power's."""
        allowed = {}
        for table, definition in await self.sql(
                "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE contype = 'c' AND conrelid IN ('nodes'::regclass, 'power_ops'::regclass)"):
            column = re.search(r"\(\(?(\w+)", definition.removeprefix("CHECK ")).group(1)
            allowed[(table, column)] = set(re.findall(r"'([^']*)'::text", definition))
        self.assertEqual(allowed[("power_ops", "state")], set(OP_STATES))
        self.assertEqual(allowed[("power_ops", "action")], set(ACTIONS))
        self.assertEqual(allowed[("nodes", "power_state")], set(POWER_STATES))
        self.assertEqual(allowed[("nodes", "desired_state")], set(TARGET_STATES))
        self.assertEqual(allowed[("nodes", "drift_observed")], set(TARGET_STATES))


class NodeTests(StoreTestCase):
    async def test_create_get_list_update_delete(self):
        node = await self.store.nodes.create("n1", "c1", ipmi())
        self.assertEqual(node["name"], "n1")
        self.assertEqual(node["cluster"], "c1")
        self.assertEqual(opened(node)["password"], "pw")
        self.assertTrue(node["power"]["agents"][0]["params"]["password"].startswith("enc:v1:"))
        self.assertEqual((node["desired_state"], node["power_state"], node["responsive"]),
                         (None, "unknown", True))
        datetime.datetime.fromisoformat(node["created_at"])  # ISO text
        self.assertEqual(await self.sql("SELECT name FROM clusters"), [("c1",)])
        await self.store.nodes.create("n2", "c2", ipmi("10.0.0.6"))
        await self.store.nodes.create("n0", "c1", ipmi("10.0.0.7"))
        self.assertEqual(await self.store.nodes.get("n1"), node)
        self.assertEqual([n["name"] for n in await self.store.nodes.list()], ["n0", "n1", "n2"])
        self.assertEqual([n["name"] for n in await self.store.nodes.list(cluster="c1")],
                         ["n0", "n1"])
        self.assertEqual([n["name"] for n in await self.store.nodes.list(after_name="n0",
                                                                         limit=1)], ["n1"])
        updated = await self.store.nodes.update("n1", cluster="c2", power=ipmi("10.9.9.9", "new"))
        self.assertEqual(updated["cluster"], "c2")
        self.assertEqual(opened(updated), {"host": "10.9.9.9", "password": "new"})
        self.assertGreater(updated["updated_at"], node["updated_at"])
        await self.store.nodes.delete("n1")
        with self.assertRaises(NotFound):
            await self.store.nodes.get("n1")

    async def test_refusals_write_nothing(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        with self.assertRaises(Conflict):
            await self.store.nodes.create("n1", "c9", ipmi())
        with self.assertRaises(PowerDocumentRefused) as e:
            await self.store.nodes.create("n2", "c8", {"agents": [{"driver": "ipmi"}]})
        self.assertIn("power.agents[0]: ipmi parameter 'host': is required", str(e.exception))
        with self.assertRaises(InvalidInput):
            await self.store.nodes.create("bad name", "c7", ipmi())
        with self.assertRaises(InvalidInput):
            await self.store.nodes.create("n3", "", ipmi())
        self.assertEqual(await self.sql("SELECT name FROM clusters"), [("c1",)])
        self.assertEqual(await self.sql("SELECT count(*) FROM nodes"), [(1,)])
        with self.assertRaises(InvalidInput):
            await self.store.nodes.update("n1", power_state="on")
        with self.assertRaises(PowerDocumentRefused):
            await self.store.nodes.update("n1", cluster="c6", power={"mode": "x", "agents": []})
        self.assertEqual(await self.sql("SELECT cluster FROM nodes"), [("c1",)])
        for call in (self.store.nodes.get, self.store.nodes.delete):
            with self.assertRaises(NotFound):
                await call("ghost")
        with self.assertRaises(NotFound):
            await self.store.nodes.update("ghost", cluster="c1")

    async def test_update_keeps_secrets_sent_back_redacted(self):
        await self.store.nodes.create("n1", "c1", ipmi(password="hunter2"))
        shown = ipmi(host="10.1.1.1", password="(set)")
        node = await self.store.nodes.update("n1", power=shown)
        self.assertEqual(opened(node), {"host": "10.1.1.1", "password": "hunter2"})
        with self.assertRaises(PowerDocumentRefused):
            await self.store.nodes.create("n2", "c1", shown)


class PowerRequestTests(StoreTestCase):
    async def test_actions_set_desired_state_and_journal_pending_ops(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        expected = [("on", "on"), ("off", "off"), ("query", "off"), ("cycle", "on"),
                    ("soft-off", "off"), ("soft_off", "off")]
        for action, desired in expected:
            op = await self.store.ops.request("n1", action, requester="alice")
            self.assertEqual((op["state"], op["node"], op["requester"]), ("pending", "n1", "alice"))
            self.assertEqual(op["action"], action.replace("_", "-"))
            node = await self.store.nodes.get("n1")
            self.assertEqual(node["desired_state"], desired, action)
        self.assertEqual(await self.store.ops.get(op["id"]), op)

    async def test_unknown_node_or_action_writes_nothing(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        with self.assertRaises(NotFound) as e:
            await self.store.ops.request("ghost", "on")
        self.assertIn("'ghost'", str(e.exception))
        with self.assertRaises(InvalidInput) as e:
            await self.store.ops.request("n1", "reboot")
        self.assertIn("unknown power action 'reboot'", str(e.exception))
        self.assertEqual(await self.sql("SELECT count(*) FROM power_ops"), [(0,)])
        self.assertEqual(await self.sql("SELECT desired_state FROM nodes"), [(None,)])

    async def test_request_is_notified_after_commit(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        listener = await self.connect()
        heard = defer.Deferred()
        listener.addNotifyObserver(
            lambda n: heard.callback((n.channel, n.payload)) if not heard.called else None)
        await listener.runOperation("LISTEN power_ops")
        op = await self.store.ops.request("n1", "on")
        heard.addTimeout(5, reactor)
        self.assertEqual(await heard, ("power_ops", str(op["id"])))

    async def test_last_writer_wins_under_concurrent_requests(self):
        """
        Two requests queue on the node's row lock (held by a third
        connection); whichever commits last sets the desired state, and it
        is the one with the higher operation id.
        """
        await self.store.nodes.create("n1", "c1", ipmi())
        holder = await self.connect()
        released = defer.Deferred()

        def hold(cursor):
            d = cursor.execute("SELECT 1 FROM nodes WHERE name = 'n1' FOR UPDATE")
            d.addCallback(lambda _: released)
            return d

        held = holder.runInteraction(hold)
        await task.deferLater(reactor, 0.05, lambda: None)
        finished = []
        first = self.store.ops.request("n1", "on")
        second = self.store.ops.request("n1", "off")
        for d in (first, second):
            d.addBoth(lambda result: finished.append(result) or result)
        await task.deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(finished, [], "the row lock did not serialise")
        released.callback(None)
        await held
        ops = await defer.gatherResults([first, second])
        last = max(ops, key=lambda op: op["id"])
        node = await self.store.nodes.get("n1")
        self.assertEqual(node["desired_state"], {"on": "on", "off": "off"}[last["action"]])
        self.assertEqual(await self.sql("SELECT count(*) FROM power_ops"), [(2,)])

    async def test_list_ops_filters_and_pages(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        await self.store.nodes.create("n2", "c1", ipmi())
        ids = [(await self.store.ops.request(n, "on"))["id"] for n in ("n1", "n2", "n1")]
        await self.store.ops.record_outcome(ids[0], "succeeded")
        self.assertEqual([o["id"] for o in await self.store.ops.list()], ids[::-1])
        self.assertEqual([o["id"] for o in await self.store.ops.list(node="n1")],
                         [ids[2], ids[0]])
        self.assertEqual([o["id"] for o in await self.store.ops.list(state="pending")],
                         [ids[2], ids[1]])
        self.assertEqual([o["id"] for o in await self.store.ops.list(limit=1)], [ids[2]])
        self.assertEqual([o["id"] for o in await self.store.ops.list(before_id=ids[1])],
                         [ids[0]])
        with self.assertRaises(InvalidInput):
            await self.store.ops.list(state="done")
        with self.assertRaises(InvalidInput):
            await self.store.ops.list(limit=0)
        for bad in ("abc", 0, 2**70, None):
            with self.assertRaises(NotFound):
                await self.store.ops.get(bad)


class AmpSideTests(StoreTestCase):
    async def test_outstanding_ops_pages_open_ops_of_one_cluster_with_resolved_power(self):
        pm = await self.store.pod_managers.create("rack", "https://10.1.0.1", "admin", "s3cret",
                                                 "a rack")
        await self.store.nodes.create("a1", "a", pod_agent(pm["uuid"], "7"))
        await self.store.nodes.create("a2", "a", ipmi())
        await self.store.nodes.create("b1", "b", ipmi())
        ops = []
        for node in ("a1", "b1", "a2", "a1", "a2", "a1"):
            ops.append(await self.store.ops.request(node, "on"))
        await self.store.ops.record_outcome(ops[3]["id"], "succeeded")
        await self.store.ops.mark_running(ops[4]["id"], "p1")
        want = [ops[i]["id"] for i in (0, 2, 4, 5)]
        seen, after = [], 0
        while True:
            page = await self.store.ops.outstanding("a", after_id=after, limit=3)
            if not page:
                break
            self.assertLessEqual(len(page), 3)
            seen.extend(page)
            after = page[-1]["id"]
        self.assertEqual([o["id"] for o in seen], want)
        everything = await self.store.ops.outstanding("a", limit=10_000)  # the region's own reads
        self.assertEqual([o["id"] for o in everything], want)
        self.assertEqual([o["state"] for o in seen], ["pending", "pending", "running", "pending"])
        first = seen[0]
        self.assertIsNone(first["power_error"])
        self.assertEqual(first["power"]["agents"][0]["params"], {
            "url": "https://10.1.0.1", "username": "admin", "password": "s3cret", "system": "7"})
        self.assertEqual(await self.store.ops.outstanding("nowhere"), [])

    async def test_desired_states_and_node_power_config(self):
        for name in ("n1", "n2", "n3"):
            await self.store.nodes.create(name, "c1", ipmi())
        await self.store.nodes.create("x1", "c2", ipmi())
        await self.store.ops.request("n2", "off")
        page = await self.store.nodes.desired_states("c1", limit=2)
        self.assertEqual([(d["node"], d["desired_state"]) for d in page],
                         [("n1", None), ("n2", "off")])
        self.assertEqual(page[0]["power"]["agents"][0]["params"]["port"], 623)  # resolved
        page = await self.store.nodes.desired_states("c1", after_name="n2")
        self.assertEqual([d["node"] for d in page], ["n3"])
        config = await self.store.nodes.power_config("n1")
        self.assertEqual(config["agents"][0]["params"],
                         {"host": "10.0.0.5", "port": 623, "username": "", "password": "pw"})
        with self.assertRaises(NotFound):
            await self.store.nodes.power_config("ghost")

    async def test_pod_manager_credentials_reach_the_pserv_after_a_change(self):
        pm = await self.store.pod_managers.create("rack", "https://10.1.0.1", "admin", "old", "")
        await self.store.nodes.create("n1", "c1", pod_agent(pm["uuid"]))
        await self.store.pod_managers.update(pm["uuid"], password="new", url="https://10.1.0.2")
        params = (await self.store.nodes.power_config("n1"))["agents"][0]["params"]
        self.assertEqual((params["password"], params["url"]), ("new", "https://10.1.0.2"))

    async def test_mark_running_and_idempotent_record_outcome(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        op = await self.store.ops.request("n1", "off")
        other = await self.store.ops.request("n1", "off")
        got = await self.store.ops.mark_running(op["id"], "p1")
        self.assertIsInstance(got, Recorded)
        self.assertTrue(got.changed)
        self.assertEqual((got.op["state"], got.op["pserv"]), ("running", "p1"))
        self.assertIsNotNone(got.op["started_at"])
        self.assertFalse((await self.store.ops.mark_running(op["id"], "p1")).changed)
        moved = await self.store.ops.mark_running(op["id"], "p2", started_at=1_700_000_000.0)
        self.assertEqual((moved.changed, moved.op["pserv"]), (True, "p2"))
        self.assertTrue(moved.op["started_at"].startswith("2023-11-14"))

        done = await self.store.ops.record_outcome(op["id"], "succeeded", observed_state="off",
                                               agent="0:ipmi")
        self.assertTrue(done.changed)
        self.assertEqual((done.op["state"], done.op["observed_state"], done.op["agent"]),
                         ("succeeded", "off", "0:ipmi"))
        self.assertIsNotNone(done.op["finished_at"])
        again = await self.store.ops.record_outcome(op["id"], "failed", error="late report")
        self.assertFalse(again.changed)
        self.assertEqual(again.op, done.op)
        self.assertFalse((await self.store.ops.mark_running(op["id"], "p3")).changed)

        joined = await self.store.ops.record_outcome(other["id"], "succeeded",
                                                 coalesced_into=op["id"], pserv="p2")
        self.assertEqual((joined.op["coalesced_into"], joined.op["pserv"]), (op["id"], "p2"))

    async def test_record_outcome_refusals(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        op = await self.store.ops.request("n1", "on")
        for kwargs in ({"state": "running"}, {"state": "succeeded", "observed_state": "up"},
                       {"state": "superseded", "superseded_by": 999},
                       {"state": "superseded", "superseded_by": op["id"]}):
            with self.assertRaises(InvalidInput):
                await self.store.ops.record_outcome(op["id"], **kwargs)
        self.assertEqual((await self.store.ops.get(op["id"]))["state"], "pending")
        with self.assertRaises(NotFound):
            await self.store.ops.record_outcome(999, "failed")
        with self.assertRaises(NotFound):
            await self.store.ops.mark_running(999, "p1")


class OutcomeStateTests(StoreTestCase):
    """An outcome and the node state it implies, written in one transaction (issue 14)."""

    async def op(self, action="off"):
        await self.store.nodes.create("n1", "c1", ipmi())
        return await self.store.ops.request("n1", action)

    async def test_an_observed_state_is_recorded_on_the_node(self):
        op = await self.op()
        done = await self.store.nodes.record_outcome(op["id"], "succeeded", observed_state="off",
                                                     agent="0:ipmi")
        self.assertTrue(done.changed)
        node = await self.store.nodes.get("n1")
        self.assertEqual((node["power_state"], node["last_error"]), ("off", None))
        self.assertIsNotNone(node["last_queried_at"])

    async def test_a_failed_change_leaves_its_error_but_is_not_a_failed_poll(self):
        op = await self.op()
        await self.store.nodes.record_outcome(op["id"], "failed", error="unreachable: x")
        node = await self.store.nodes.get("n1")
        self.assertEqual((node["last_error"], node["failed_polls"], node["power_state"]),
                         ("unreachable: x", 0, "unknown"))
        self.assertIsNone(node["last_queried_at"])

    async def test_a_failed_query_is_a_failed_poll(self):
        op = await self.op("query")
        await self.store.nodes.record_outcome(op["id"], "failed")
        node = await self.store.nodes.get("n1")
        self.assertEqual((node["last_error"], node["failed_polls"]), ("failed", 1))

    async def test_other_outcomes_and_repeats_leave_the_node_alone(self):
        op = await self.op()
        before = await self.store.nodes.get("n1")
        await self.store.nodes.record_outcome(op["id"], "cancelled", error="bye")
        again = await self.store.nodes.record_outcome(op["id"], "succeeded",
                                                      observed_state="on")
        self.assertFalse(again.changed)
        self.assertEqual(await self.store.nodes.get("n1"), before)

    async def test_a_refused_outcome_writes_neither(self):
        op = await self.op()
        with self.assertRaises(InvalidInput):
            await self.store.nodes.record_outcome(op["id"], "succeeded",
                                                  observed_state="sideways")
        self.assertEqual((await self.store.ops.get(op["id"]))["state"], "pending")
        self.assertEqual((await self.store.nodes.get("n1"))["power_state"], "unknown")
        with self.assertRaises(NotFound):
            await self.store.nodes.record_outcome(999, "failed")


class PowerStateTests(StoreTestCase):
    async def test_changes_move_last_changed_at_only_when_the_state_changes(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        first = await self.store.nodes.record_power_state("n1", "on")
        self.assertEqual((first["power_state"], first["responsive"]), ("on", True))
        self.assertIsNotNone(first["last_queried_at"])
        self.assertIsNotNone(first["last_changed_at"])
        same = await self.store.nodes.record_power_state("n1", "on")
        self.assertEqual(same["last_changed_at"], first["last_changed_at"])
        self.assertGreater(same["last_queried_at"], first["last_queried_at"])
        off = await self.store.nodes.record_power_state("n1", "off", queried=False)
        self.assertEqual(off["last_queried_at"], same["last_queried_at"])
        self.assertGreater(off["last_changed_at"], first["last_changed_at"])
        with self.assertRaises(InvalidInput):
            await self.store.nodes.record_power_state("n1", "maybe")
        with self.assertRaises(InvalidInput):
            await self.store.nodes.record_power_state("n1", "on", error="x" * 4097)
        with self.assertRaises(NotFound):
            await self.store.nodes.record_power_state("ghost", "on")
        # "error" without words is still a failure, with a last_error that says so;
        # an error with a state keeps the state while responsive
        failed = await self.store.nodes.record_power_state("n1", "error")
        self.assertEqual((failed["power_state"], failed["last_error"], failed["failed_polls"]),
                         ("off", "the query failed", 1))
        failed = await self.store.nodes.record_power_state("n1", "on", error="x" * 4096)
        self.assertEqual((failed["power_state"], failed["failed_polls"]), ("off", 2))

    async def test_a_batch_of_polls_records_every_good_report_and_names_the_rest(self):
        for name in ("n1", "n2", "n3"):
            await self.store.nodes.create(name, "c1", ipmi())
        await self.store.nodes.record_power_state("n3", "on")
        recorded, missing, refused = await self.store.nodes.record_polls([
            ("n2", "off", None), ("ghost", "on", None), ("n1", "maybe", None),
            ("n3", "error", "x" * 5000), ("n1", "on", None)])
        # the bad report of n1 is replaced by its good one (the last per node)
        self.assertEqual(sorted(recorded), ["n1", "n2"])
        self.assertEqual((recorded["n1"]["power_state"], recorded["n2"]["power_state"]),
                         ("on", "off"))
        self.assertIsNone(recorded["n2"]["reconcile"])
        self.assertEqual(missing, ["ghost"])
        self.assertEqual(list(refused), ["n3"])
        self.assertIn("error", refused["n3"])
        n3 = await self.store.nodes.get("n3")
        self.assertEqual((n3["power_state"], n3["last_error"]), ("on", None))

    async def test_a_batch_keeps_each_nodes_failed_poll_count(self):
        store = self.make_store(responsive_grace=0.0)
        await store.nodes.create("n1", "c1", ipmi())
        await store.nodes.create("n2", "c1", ipmi())
        for _ in range(3):
            recorded, _, _ = await store.nodes.record_polls(
                [("n1", "error", "timeout"), ("n2", "on", None)])
        self.assertEqual((recorded["n1"]["failed_polls"], recorded["n1"]["responsive"]),
                         (3, False))
        self.assertEqual((recorded["n2"]["failed_polls"], recorded["n2"]["responsive"]),
                         (0, True))

    async def test_within_the_grace_failed_polls_never_make_a_node_non_responsive(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        await self.store.nodes.record_power_state("n1", "on")
        for _ in range(5):
            node = await self.store.nodes.record_power_state("n1", "error", error="timeout")
        self.assertEqual((node["responsive"], node["failed_polls"]), (True, 5))
        self.assertEqual((node["power_state"], node["last_error"]), ("on", "timeout"))

    async def test_more_than_two_failed_polls_after_the_grace(self):
        store = self.make_store(responsive_grace=0.0)
        await store.nodes.create("n1", "c1", ipmi())
        await store.nodes.record_power_state("n1", "on")
        for _ in range(2):
            node = await store.nodes.record_power_state("n1", "error", error="timeout")
            self.assertTrue(node["responsive"])
        node = await store.nodes.record_power_state("n1", "error", error="timeout")
        self.assertEqual((node["responsive"], node["failed_polls"], node["power_state"]),
                         (False, 3, "error"))
        # a failed action (not a poll) does not count as a poll
        node = await store.nodes.record_power_state("n1", "error", error="x", queried=False)
        self.assertEqual(node["failed_polls"], 3)
        node = await store.nodes.record_power_state("n1", "off")
        self.assertEqual((node["responsive"], node["failed_polls"], node["last_error"]),
                         (True, 0, None))

    async def test_grace_counts_from_the_last_good_poll(self):
        store = self.make_store(responsive_grace=0.3)
        await store.nodes.create("n1", "c1", ipmi())
        await store.nodes.record_power_state("n1", "on")
        for _ in range(4):
            node = await store.nodes.record_power_state("n1", "unknown", error="timeout")
        self.assertTrue(node["responsive"])
        await task.deferLater(reactor, 0.35, lambda: None)
        node = await store.nodes.record_power_state("n1", "unknown", error="timeout")
        self.assertFalse(node["responsive"])
        self.assertEqual(node["power_state"], "unknown")


class PservTests(StoreTestCase):
    async def test_register_heartbeat_disconnect_and_clusters(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        op = await self.store.ops.request("n1", "on")
        await self.store.ops.mark_running(op["id"], "p1")
        p1 = await self.store.clusters.register_pserv("p1", "c1", "0.1", "region-a")
        self.assertEqual((p1["connected"], p1["region"], p1["cluster"]), (True, "region-a", "c1"))
        await self.store.clusters.register_pserv("p2", "c2", "0.1", "region-a")
        beat = await self.store.clusters.heartbeat("p1", 3)
        self.assertEqual(beat["actions_in_flight"], 3)
        self.assertEqual([p["name"] for p in await self.store.clusters.live_pservs("c1")], ["p1"])
        with self.assertRaises(NotFound):
            await self.store.clusters.heartbeat("ghost", 0)
        with self.assertRaises(InvalidInput):
            await self.store.clusters.heartbeat("p1", -1)
        with self.assertRaises(InvalidInput):  # beyond the column's integer
            await self.store.clusters.heartbeat("p1", 2**31)
        self.assertEqual((await self.store.clusters.heartbeat("p1", 2**31 - 1))[
            "actions_in_flight"], 2**31 - 1)
        await self.store.clusters.heartbeat("p1", 3)

        clusters = {c["name"]: c for c in await self.store.clusters.list()}
        self.assertEqual(set(clusters), {"c1", "c2"})
        c1 = clusters["c1"]
        self.assertEqual((c1["status"], c1["nodes"], c1["running_ops"], c1["actions_in_flight"]),
                         ("online", 1, 1, 3))
        self.assertEqual([p["name"] for p in c1["pservs"]], ["p1"])
        self.assertIsNotNone(c1["pservs"][0]["last_heartbeat"])

        # the pserv reconnected through region-b: region-a's late notice is ignored
        await self.store.clusters.register_pserv("p1", "c1", "0.2", "region-b")
        self.assertFalse(await self.store.clusters.pserv_disconnected("p1", region="region-a"))
        self.assertTrue(await self.store.clusters.pserv_disconnected("p1", region="region-b"))
        self.assertFalse(await self.store.clusters.pserv_disconnected("p1"))
        self.assertEqual(await self.store.clusters.live_pservs("c1"), [])
        c1 = {c["name"]: c for c in await self.store.clusters.list()}["c1"]
        self.assertEqual((c1["status"], c1["actions_in_flight"]), ("offline", 0))
        self.assertEqual(c1["pservs"][0]["connected"], False)

    async def test_a_silent_pserv_is_not_live(self):
        store = self.make_store(heartbeat_timeout=0.0)
        await store.clusters.register_pserv("p1", "c1", "0.1", "r")
        self.assertEqual(await store.clusters.live_pservs("c1"), [])
        self.assertEqual((await store.clusters.list())[0]["status"], "offline")


class PodManagerTests(StoreTestCase):
    async def test_crud_without_passwords(self):
        pm = await self.store.pod_managers.create("rack-1", "https://10.1.0.1", "admin",
                                                 "s3cret", "row 1")
        self.assertNotIn("password", pm)
        self.assertEqual((pm["password_set"], pm["status"], pm["driver"]),
                         (True, "offline", "redfish"))
        self.assertEqual(await self.store.pod_managers.get(pm["uuid"].upper()), pm)
        other = await self.store.pod_managers.create("a-rack", "https://10.1.0.2", "", "", "")
        self.assertFalse(other["password_set"])
        listed = await self.store.pod_managers.list()
        self.assertEqual([p["name"] for p in listed], ["a-rack", "rack-1"])
        self.assertNotIn("s3cret", repr(listed))
        updated = await self.store.pod_managers.update(pm["uuid"], description="row 2",
                                                      password="")
        self.assertEqual((updated["description"], updated["password_set"]), ("row 2", False))
        self.assertGreater(updated["updated_at"], pm["updated_at"])
        online = await self.store.pod_managers.set_status(pm["uuid"], "online")
        self.assertEqual((online["status"], online["updated_at"]), ("online", updated["updated_at"]))
        await self.store.pod_managers.delete(pm["uuid"])
        with self.assertRaises(NotFound):
            await self.store.pod_managers.get(pm["uuid"])

    async def test_refusals(self):
        pm = await self.store.pod_managers.create("rack-1", "https://10.1.0.1", "u", "p", "")
        await self.store.pod_managers.create("rack-2", "https://10.1.0.2", "u", "p", "")
        with self.assertRaises(Conflict):
            await self.store.pod_managers.create("rack-1", "https://10.1.0.3", "u", "p", "")
        with self.assertRaises(Conflict):
            await self.store.pod_managers.update(pm["uuid"], name="rack-2")
        for bad in ({"url": "ftp://x"}, {"name": ""}, {"driver": "ipmi"}, {"password": None}):
            with self.assertRaises(InvalidInput):
                await self.store.pod_managers.update(pm["uuid"], **bad)
        with self.assertRaises(InvalidInput):
            await self.store.pod_managers.create("r3", "https://x", "u", "p", "", driver="ilo")
        with self.assertRaises(InvalidInput):
            await self.store.pod_managers.set_status(pm["uuid"], "broken")
        with self.assertRaises(NotFound):  # a uuid, but of none
            await self.store.pod_managers.set_status("7b0c53c6-3bd1-4c57-9c4a-0d7e3c2f3a10",
                                                     "online")
        for call in (self.store.pod_managers.get, self.store.pod_managers.delete):
            for bad in ("not-a-uuid", "7b0c53c6-3bd1-4c57-9c4a-0d7e3c2f3a10"):
                with self.assertRaises(NotFound):
                    await call(bad)
        self.assertEqual(await self.sql("SELECT count(*) FROM pod_managers"), [(2,)])
        self.assertEqual((await self.store.pod_managers.get(pm["uuid"]))["name"], "rack-1")

    async def test_delete_refused_while_a_node_uses_it(self):
        pm = await self.store.pod_managers.create("rack-1", "https://10.1.0.1", "u", "p", "")
        await self.store.nodes.create("n1", "c1", pod_agent(pm["uuid"]))
        await self.store.nodes.create("n2", "c1", pod_agent(pm["uuid"]))
        with self.assertRaises(Conflict) as e:
            await self.store.pod_managers.delete(pm["uuid"])
        self.assertIn("'rack-1' is used by 'n1', 'n2'", str(e.exception))
        await self.store.nodes.update("n1", power=ipmi())  # n1 stops using it
        await self.store.nodes.delete("n2")
        self.assertEqual(await self.sql("SELECT count(*) FROM node_pod_managers"), [(0,)])
        await self.store.pod_managers.delete(pm["uuid"])

    async def test_the_refusal_names_five_users_then_says_others(self):
        pm = await self.store.pod_managers.create("rack-1", "https://10.1.0.1", "u", "p", "")
        for i in range(1, 6):
            await self.store.nodes.create(f"n{i}", "c1", pod_agent(pm["uuid"]))
        with self.assertRaises(Conflict) as e:
            await self.store.pod_managers.delete(pm["uuid"])
        self.assertIn("used by 'n1', 'n2', 'n3', 'n4', 'n5'; change", str(e.exception))
        await self.store.nodes.create("n6", "c1", pod_agent(pm["uuid"]))
        with self.assertRaises(Conflict) as e:
            await self.store.pod_managers.delete(pm["uuid"])
        self.assertIn("used by 'n1', 'n2', 'n3', 'n4', 'n5' and others; change",
                      str(e.exception))
        self.assertEqual(await self.sql("SELECT count(*) FROM pod_managers"), [(1,)])

    async def test_the_database_itself_refuses_deleting_a_used_pod_manager(self):
        pm = await self.store.pod_managers.create("rack-1", "https://10.1.0.1", "u", "p", "")
        await self.store.nodes.create("n1", "c1", pod_agent(pm["uuid"]))
        failure = self.sql("DELETE FROM pod_managers")
        await self.assertFailure(failure, Exception)
        self.assertEqual(await self.sql("SELECT count(*) FROM pod_managers"), [(1,)])

    async def test_a_node_naming_a_missing_pod_manager_is_refused(self):
        with self.assertRaises(PowerDocumentRefused) as e:
            await self.store.nodes.create(
                "n1", "c1", pod_agent("7b0c53c6-3bd1-4c57-9c4a-0d7e3c2f3a10"))
        self.assertIn("does not exist", str(e.exception))
        self.assertEqual(await self.sql("SELECT count(*) FROM nodes"), [(0,)])


class TextLimitTests(StoreTestCase):
    """
    Each text the store bounds takes exactly its limit and refuses one
    character more, writing nothing (found by mutation testing: a limit off
    by one survived every other test).
    """

    async def test_who_and_what_fields_hold_255_characters(self):
        ok, over = "a" * 255, "a" * 256
        await self.store.nodes.create("n1", "c1", ipmi())
        # requester of a power request
        with self.assertRaises(InvalidInput):
            await self.store.ops.request("n1", "on", requester=over)
        op = await self.store.ops.request("n1", "on", requester=ok)
        self.assertEqual(op["requester"], ok)
        # the pserv running it, one at a time and a page at a time
        with self.assertRaises(InvalidInput):
            await self.store.ops.mark_running(op["id"], over)
        with self.assertRaises(InvalidInput):
            await self.store.ops.mark_running_many([op["id"]], over, 1)
        self.assertEqual((await self.store.ops.get(op["id"]))["state"], "pending")
        await self.store.ops.mark_running_many([op["id"], op["id"] + 1000], ok, 1)  # one gone
        self.assertEqual((await self.store.ops.get(op["id"]))["pserv"], ok)
        self.assertTrue((await self.store.ops.mark_running(op["id"], ok[:-1] + "b")).changed)
        # who cancels or confirms it
        with self.assertRaises(InvalidInput):
            await self.store.ops.mark_operator(op["id"], "cancelled_by", over)
        marked = await self.store.ops.mark_operator(op["id"], "cancelled_by", ok)
        self.assertEqual(marked["cancelled_by"], ok)
        # a pserv's version and region
        with self.assertRaises(InvalidInput):
            await self.store.clusters.register_pserv("p1", "c1", over, "r")
        with self.assertRaises(InvalidInput):
            await self.store.clusters.register_pserv("p1", "c1", "v", over)
        self.assertEqual(await self.store.clusters.live_pservs("c1"), [])
        pserv = await self.store.clusters.register_pserv("p1", "c1", ok, ok)
        self.assertEqual((pserv["version"], pserv["region"]), (ok, ok))
        # who deletes a node
        with self.assertRaises(InvalidInput):
            await self.store.nodes.delete("n1", by=over)
        await self.store.nodes.get("n1")  # still there
        deleted = await self.store.nodes.delete("n1", by=ok)
        self.assertEqual(deleted["node"], "n1")

    async def test_a_pod_manager_name_is_1_to_255_characters(self):
        for bad in ("", "p" * 256):
            with self.assertRaises(InvalidInput):
                await self.store.pod_managers.create(bad, "https://10.1.0.1", "admin", "pw")
        self.assertEqual(await self.store.pod_managers.list(), [])
        pm = await self.store.pod_managers.create("p" * 255, "https://10.1.0.1", "admin", "pw")
        self.assertEqual(pm["name"], "p" * 255)
        one = await self.store.pod_managers.create("q", "https://10.1.0.2", "admin", "pw")
        self.assertEqual(one["name"], "q")


class DeleteTests(StoreTestCase):
    async def test_open_operations_end_cancelled_saying_by_whom_if_known(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        first = await self.store.ops.request("n1", "on")
        second = await self.store.ops.request("n1", "query")
        done = await self.store.ops.request("n1", "off")
        await self.store.ops.record_outcome(done["id"], "succeeded")
        answer = await self.store.nodes.delete("n1")  # nobody named
        self.assertEqual(answer, {"node": "n1", "cancelled": [first["id"], second["id"]]})
        for op_id in (first["id"], second["id"]):
            op = await self.store.ops.get(op_id)
            self.assertEqual((op["state"], op["error"], op["cancelled_by"]),
                             ("cancelled", "node n1 deleted", None))
        self.assertEqual((await self.store.ops.get(done["id"]))["state"], "succeeded")
        await self.store.nodes.create("n1", "c1", ipmi())
        again = await self.store.ops.request("n1", "on")
        await self.store.nodes.delete("n1", by="alice")
        op = await self.store.ops.get(again["id"])
        self.assertEqual((op["error"], op["cancelled_by"]), ("node n1 deleted by alice", "alice"))
        with self.assertRaises(NotFound):
            await self.store.nodes.delete("n1")


class OutcomeEpochTests(StoreTestCase):
    async def test_only_the_owner_s_epoch_may_end_an_operation(self):
        from powerctl.region.errors import StaleEpoch

        await self.store.nodes.create("n1", "c1", ipmi())
        op = await self.store.ops.request("n1", "on")
        await self.pool.runOperation("UPDATE nodes SET owner_epoch = 7 WHERE name = 'n1'")
        for stale in (6, 8):
            with self.assertRaises(StaleEpoch) as caught:
                await self.store.ops.record_outcome(op["id"], "succeeded", epoch=stale)
            self.assertIn(f"epoch {stale} does not own node n1", str(caught.exception))
        self.assertEqual((await self.store.ops.get(op["id"]))["state"], "pending")
        # texts past 4096 characters are refused before anything is read
        for field in ("agent", "error", "pserv", "cancelled_by"):
            with self.assertRaises(InvalidInput):
                await self.store.ops.record_outcome(op["id"], "failed", epoch=7,
                                                    **{field: "x" * 4097})
        self.assertEqual((await self.store.ops.get(op["id"]))["state"], "pending")
        recorded = await self.store.ops.record_outcome(op["id"], "failed", epoch=7,
                                                       error="x" * 4096)
        self.assertEqual((recorded.changed, recorded.op["state"]), (True, "failed"))
        # without an epoch (the region's own verdicts) the owner is not asked
        other = await self.store.ops.request("n1", "off")
        recorded = await self.store.ops.record_outcome(other["id"], "cancelled")
        self.assertTrue(recorded.changed)


class OperatorMarkTests(StoreTestCase):
    async def test_attribution_of_an_operator_cancel_or_confirmation(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        op = await self.store.ops.request("n1", "on")
        with self.assertRaises(InvalidInput):  # only these two fields
            await self.store.ops.mark_operator(op["id"], "requester", "mallory")
        marked = await self.store.ops.mark_operator(op["id"], "confirmed_by", "bob")
        self.assertEqual((marked["confirmed_by"], marked["state"]), ("bob", "pending"))
        taken_back = await self.store.ops.mark_operator(op["id"], "confirmed_by", None)
        self.assertIsNone(taken_back["confirmed_by"])
        await self.store.ops.record_outcome(op["id"], "succeeded")
        with self.assertRaises(Conflict) as caught:  # it ended: too late to attribute
            await self.store.ops.mark_operator(op["id"], "cancelled_by", "bob")
        self.assertIn("already ended succeeded", str(caught.exception))
        self.assertIsNone((await self.store.ops.get(op["id"]))["cancelled_by"])
        late = await self.store.ops.mark_operator(op["id"], "cancelled_by", "bob",
                                                  ended_ok=True)
        self.assertEqual(late["cancelled_by"], "bob")
        with self.assertRaises(NotFound):
            await self.store.ops.mark_operator(999_999, "cancelled_by", "bob")


class DefaultPageTests(StoreTestCase):
    async def test_the_journal_pages_100_by_default(self):
        """The documented default of GET /v1/power_ops, with or without limit=None."""
        await self.store.nodes.create("n1", "c1", ipmi())
        await self.pool.runOperation(
            "INSERT INTO power_ops (node, action, requester)"
            " SELECT 'n1', 'query', 't' FROM generate_series(1, 101)")
        for kwargs in ({}, {"limit": None}):
            page = await self.store.ops.list(**kwargs)
            self.assertEqual(len(page), 100, kwargs)
        self.assertEqual(len(await self.store.ops.list(limit=101)), 101)
        self.assertEqual(len(await self.store.ops.list(node="n1", state="pending",
                                                       before_id=page[-1]["id"])), 1)


class ClusterTests(StoreTestCase):
    async def test_a_pserv_names_itself_and_its_cluster_like_a_node(self):
        for name, cluster in (("", "c1"), ("p 1", "c1"), ("p1", ""), ("p1", "c/1")):
            with self.assertRaises(InvalidInput):
                await self.store.clusters.register_pserv(name, cluster, "v", "r")
        self.assertEqual(await self.store.clusters.list(), [])  # no cluster made either
        pserv = await self.store.clusters.register_pserv("p1", "c1", "v", None)
        self.assertEqual((pserv["region"], pserv["cluster"]), (None, "c1"))
        self.assertEqual([c["name"] for c in await self.store.clusters.list()], ["c1"])

    async def test_drift_policy_of_a_known_cluster_only(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        self.assertEqual((await self.store.clusters.list())[0]["drift_policy"], "report")
        with self.assertRaises(InvalidInput):
            await self.store.clusters.set_policy("c1", "ignore")
        with self.assertRaises(NotFound):
            await self.store.clusters.set_policy("c2", "enforce")
        self.assertEqual(await self.store.clusters.set_policy("c1", "enforce"),
                         {"name": "c1", "drift_policy": "enforce"})
        self.assertEqual([c["name"] for c in await self.store.clusters.list()], ["c1"])

    async def test_serving_names_the_node_s_cluster_and_its_live_pservs(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        self.assertEqual(await self.store.clusters.serving("n1"), ("c1", []))
        await self.store.clusters.register_pserv("p2", "c1", "v", "r")
        await self.store.clusters.register_pserv("p1", "c1", "v", "r")
        await self.store.clusters.register_pserv("p3", "c2", "v", "r")
        self.assertEqual(await self.store.clusters.serving("n1"), ("c1", ["p1", "p2"]))
        await self.store.clusters.pserv_disconnected("p1")
        self.assertEqual(await self.store.clusters.serving("n1"), ("c1", ["p2"]))
        self.assertIsNone(await self.store.clusters.serving("n2"))


class ConcurrentOutcomeTests(StoreTestCase):
    """Two reports about one operation at once: the row lock makes the second see the first."""

    async def test_an_outcome_waits_for_one_being_written_and_then_changes_nothing(self):
        import psycopg2

        await self.store.nodes.create("n1", "c1", ipmi())
        op = await self.store.ops.request("n1", "on")
        other = psycopg2.connect(self.dsn)  # another region, ending the same operation
        watcher = psycopg2.connect(self.dsn)
        watcher.autocommit = True
        self.addCleanup(other.close)
        self.addCleanup(watcher.close)
        with other.cursor() as cur:
            cur.execute("UPDATE power_ops SET state = 'failed', finished_at = now()"
                        " WHERE id = %s", (op["id"],))
        late = self.store.ops.record_outcome(op["id"], "succeeded")

        def blocked():
            with watcher.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type"
                            " = 'Lock' AND datname = current_database()")
                return cur.fetchone()[0] > 0

        for _ in range(200):  # until our report waits on the other's row lock
            if blocked():
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        else:
            self.fail("the second report never waited for the first")
        other.commit()
        recorded = await late
        self.assertEqual((recorded.changed, recorded.op["state"]), (False, "failed"))
        self.assertEqual((await self.store.ops.get(op["id"]))["state"], "failed")


class FenceStoreTests(StoreTestCase):
    """
    A fence requested soon after the node's last one succeeded (nothing
    switched on since) joins it, judged on the database's clock: the
    store is built without one of its own, as the region builds it.
    """

    async def test_a_second_fence_within_the_window_joins_the_first(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        first = await self.store.ops.request("n1", "fence")
        await self.store.ops.record_outcome(first["id"], "succeeded", observed_state="off")
        again = await self.store.ops.request("n1", "fence")
        self.assertEqual((again["state"], again["coalesced_into"]), ("succeeded", first["id"]))
        self.assertEqual(again["detail"]["coalesced_fence"], first["id"])

    async def test_a_fence_requested_with_its_serving_pservs_answers_none_for_them(self):
        """A fence is journalled in a transaction of its own: who serves it is read after."""
        await self.store.nodes.create("n1", "c1", ipmi())
        op, serving = await self.store.ops.request_serving("n1", "fence", requester="ops")
        self.assertEqual((op["action"], op["state"], op["requester"], serving),
                         ("fence", "pending", "ops", None))


class OverviewStoreTests(StoreTestCase):
    async def test_an_operation_state_the_journal_does_not_know_is_refused(self):
        """Checked before the statement runs, naming the state (open or finished list)."""
        for states in ({"open_states": ("running", "bogus")},
                       {"finished_states": ("succeeded", "done")}):
            with self.assertRaises(InvalidInput) as caught:
                await self.store.nodes.overview(90.0, **states)
            self.assertIn("state: ", str(caught.exception))
        doc = await self.store.nodes.overview(90.0, open_states=("running",),
                                              finished_states=("succeeded",))
        self.assertEqual(doc["page"]["nodes"], [])


class BulkRequestStoreTests(StoreTestCase):
    async def test_an_unknown_action_is_invalid_input_and_journals_nothing(self):
        """(The API checks it first; the store refuses it on its own too.)"""
        await self.store.nodes.create("n1", "c1", ipmi())
        with self.assertRaises(InvalidInput) as caught:
            await self.store.ops.request_many("bogus", nodes=["n1"])
        self.assertIn("action: ", str(caught.exception))
        self.assertEqual(await self.store.ops.list(), [])


class HeartbeatCountStoreTests(StoreTestCase):
    async def test_actions_in_flight_must_be_a_plain_integer(self):
        await self.store.clusters.register_pserv("p1", "c1", "v", "r1")
        for bad in (True, "3", 2.5, -1, 2**31):
            with self.assertRaises(InvalidInput, msg=repr(bad)):
                await self.store.clusters.heartbeat("p1", bad)
        row = await self.store.clusters.heartbeat("p1", 3)
        self.assertEqual(row["actions_in_flight"], 3)
