"""
Reconciliation (issue 9, item 5): drift between the observed and the
desired state, reported or enforced per cluster.

The decision (:mod:`powerctl.region.drift`) is tested without a database,
with a hypothesis property over sequences of polls; the store against a
real PostgreSQL; and the whole path end to end: a region, a pserv over AMP
and the Redfish simulator, whose systems are switched behind powerctl's
back.
"""

import datetime
import json

from hypothesis import given, settings, strategies as st
from twisted.internet import reactor, task
from twisted.trial import unittest

from powerctl.region import drift
from powerctl.region.drift import Observation, assess
from powerctl.region.errors import InvalidInput, NotFound
from tests.pg import DatabaseMixin
from tests.system import SystemMixin, wait_until
from tests.test_store import StoreTestCase, ipmi

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
T1 = T0 + datetime.timedelta(seconds=30)


def obs(**kwargs):
    kwargs.setdefault("desired", "on")
    kwargs.setdefault("observed", "off")
    kwargs.setdefault("now", T0)
    return Observation(**kwargs)


def again(verdict, **kwargs):
    """The next poll after ``verdict`` was recorded."""
    return obs(drift_since=verdict.since, drift_observed=verdict.observed,
               drift_polls=verdict.polls, now=T1, **kwargs)


# -- the pure decision ------------------------------------------------------------


class AssessTests(unittest.TestCase):
    def test_a_mismatch_with_nothing_open_starts_drift(self):
        verdict = assess(obs())
        self.assertEqual((verdict.since, verdict.observed, verdict.polls, verdict.enforce),
                         (T0, "off", 1, None))
        self.assertTrue(verdict.drifted)

    def test_the_next_poll_counts_and_keeps_since(self):
        second = assess(again(assess(obs())))
        self.assertEqual((second.since, second.observed, second.polls), (T0, "off", 2))

    def test_seeing_the_desired_state_clears_it(self):
        self.assertEqual(assess(again(assess(obs()), observed="on")), drift.NO_DRIFT)
        self.assertEqual(assess(obs(observed="on")), drift.NO_DRIFT)
        self.assertEqual(assess(obs(desired="off", observed="off")), drift.NO_DRIFT)

    def test_no_desired_state_never_drifts(self):
        self.assertEqual(assess(obs(desired=None, policy="enforce")), drift.NO_DRIFT)
        recorded = assess(obs())
        self.assertEqual(assess(again(recorded, desired=None)), drift.NO_DRIFT)

    def test_no_drift_while_an_operation_is_open(self):
        self.assertEqual(assess(obs(open_op=True, policy="enforce")), drift.NO_DRIFT)
        recorded = assess(obs())
        self.assertEqual(assess(again(recorded, open_op=True, policy="enforce")),
                         drift.NO_DRIFT)

    def test_a_failed_or_inconclusive_poll_never_starts_drift(self):
        for kwargs in ({"failed": True}, {"observed": "error", "failed": True},
                       {"observed": "unknown"}, {"observed": "error"},
                       {"failed": True, "responsive": False}):
            with self.subTest(**kwargs):
                self.assertEqual(assess(obs(policy="enforce", **kwargs)), drift.NO_DRIFT)

    def test_a_failed_poll_keeps_recorded_drift_without_counting_it(self):
        recorded = assess(obs())
        for kwargs in ({"failed": True}, {"observed": "unknown"}):
            kept = assess(again(recorded, policy="enforce", **kwargs))
            self.assertEqual(kept, recorded)
            self.assertIsNone(kept.enforce)

    def test_a_non_responsive_node_is_not_drifted(self):
        recorded = assess(obs())
        self.assertEqual(assess(again(recorded, failed=True, responsive=False)),
                         drift.NO_DRIFT)

    def test_another_observation_starts_afresh(self):
        recorded = drift.Verdict(T0, "on", 5)  # recorded while desired was off
        fresh = assess(obs(drift_since=recorded.since, drift_observed="on",
                           drift_polls=5, desired="on", observed="off", now=T1))
        self.assertEqual((fresh.since, fresh.observed, fresh.polls), (T1, "off", 1))

    def test_report_never_enforces(self):
        verdict = assess(obs())
        for _ in range(5):
            verdict = assess(again(verdict))
            self.assertIsNone(verdict.enforce)
        self.assertEqual(verdict.polls, 6)

    def test_enforce_waits_for_the_second_consecutive_poll(self):
        first = assess(obs(policy="enforce"))
        self.assertIsNone(first.enforce)
        second = assess(again(first, policy="enforce"))
        self.assertEqual(second.enforce, "on")
        off = assess(again(assess(obs(desired="off", observed="on", policy="enforce")),
                           desired="off", observed="on", policy="enforce"))
        self.assertEqual(off.enforce, "off")

    def test_enforce_holds_back_after_an_operators_cancel(self):
        second = assess(again(assess(obs(policy="enforce")), policy="enforce",
                              recent_ops=(("alice", "cancelled"), ("alice", "succeeded"))))
        self.assertIsNone(second.enforce)
        self.assertIn("cancelled", second.suspended)
        self.assertTrue(second.drifted)  # still reported

    def test_enforce_gives_up_after_three_failed_reconciles_in_a_row(self):
        failed = (drift.RECONCILE_REQUESTER, "failed")
        for recent, enforced in (
                ((failed,) * 3, False),
                ((failed, failed, (drift.RECONCILE_REQUESTER, "cancelled")), False),
                ((failed,) * 2, True),
                ((failed, failed, ("alice", "failed")), True),
                (((drift.RECONCILE_REQUESTER, "succeeded"), failed, failed), True),
                ((("alice", "succeeded"),) + (failed,) * 3, True)):
            with self.subTest(recent=recent):
                verdict = assess(again(assess(obs(policy="enforce")), policy="enforce",
                                       recent_ops=recent))
                self.assertEqual(verdict.enforce, "on" if enforced else None)
                self.assertEqual(verdict.suspended is None, enforced)

    def test_as_json(self):
        self.assertIsNone(drift.as_json(None, None, "on", 0))
        self.assertEqual(drift.as_json("t", "off", "on", 2),
                         {"since": "t", "observed": "off", "desired": "on", "polls": 2})


STATES = st.sampled_from(["on", "off", "unknown", "error"])
POLL = st.fixed_dictionaries({
    "observed": STATES, "failed": st.booleans(), "responsive": st.booleans(),
    "open_op": st.booleans(), "desired": st.sampled_from(["on", "off", None]),
})


class AssessProperties(unittest.TestCase):
    @settings(max_examples=300, deadline=None)
    @given(polls=st.lists(POLL, max_size=12), policy=st.sampled_from(drift.POLICIES))
    def test_a_sequence_of_polls(self, polls, policy):
        """
        Fed back poll after poll (as the store records it): drift exists
        only after a conclusive mismatching poll with nothing open; every
        enforcement asks for the desired state, under ``enforce`` only,
        after at least two consecutive conclusive mismatching polls, and
        never twice without a request (which clears the drift) between.
        """
        recorded = drift.NO_DRIFT
        streak = 0  # conclusive mismatching polls since drift was last cleared
        for i, poll in enumerate(polls):
            now = T0 + datetime.timedelta(seconds=i)
            verdict = assess(Observation(
                policy=policy, drift_since=recorded.since, drift_observed=recorded.observed,
                drift_polls=recorded.polls, now=now, **poll))
            conclusive = not poll["failed"] and poll["observed"] in ("on", "off")
            mismatch = (poll["desired"] is not None and conclusive
                        and poll["observed"] != poll["desired"])
            if poll["desired"] is None or poll["open_op"] or (conclusive and not mismatch) or (
                    not conclusive and not poll["responsive"]):
                self.assertEqual(verdict, drift.NO_DRIFT)
                streak = 0
            elif not conclusive:
                self.assertEqual(verdict, recorded)  # kept, not counted
            else:
                streak = streak + 1 if recorded.observed == poll["observed"] else 1
                self.assertEqual((verdict.observed, verdict.polls), (poll["observed"], streak))
                self.assertEqual(verdict.since, now if streak == 1 else recorded.since)
            if verdict.enforce is not None:
                # never on a first sighting: the poll before saw the same drift
                self.assertEqual(recorded.observed, poll["observed"])
                self.assertEqual(policy, "enforce")
                self.assertEqual(verdict.enforce, poll["desired"])
                self.assertGreaterEqual(verdict.polls, drift.ENFORCE_AFTER_POLLS)
                # The store journals the reconcile request, which clears drift.
                verdict, streak = drift.NO_DRIFT, 0
            recorded = verdict


# -- the store ------------------------------------------------------------------------


class StoreDriftTests(StoreTestCase):
    async def node(self, name="n1", cluster="c1", desired=None):
        await self.store.nodes.create(name, cluster, ipmi())
        if desired is not None:
            op = await self.store.ops.request(name, desired, requester="alice")
            await self.store.ops.record_outcome(op["id"], "succeeded", observed_state=desired)
            await self.store.nodes.record_power_state(name, desired, queried=False)

    async def poll(self, state, name="n1", **kwargs):
        return await self.store.nodes.record_power_state(name, state, poll=True, **kwargs)

    async def test_migration_defaults(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        node = await self.store.nodes.get("n1")
        self.assertEqual((node["drift_since"], node["drift_observed"], node["drift_polls"]),
                         (None, None, 0))
        [cluster] = await self.store.clusters.list()
        self.assertEqual((cluster["drift_policy"], cluster["drifted_nodes"]), ("report", 0))

    async def test_report_records_counts_and_clears(self):
        await self.node(desired="on")
        first = await self.poll("off")
        self.assertIsNotNone(first["drift_since"])
        self.assertEqual((first["drift_observed"], first["drift_polls"], first["reconcile"]),
                         ("off", 1, None))
        second = await self.poll("off")
        self.assertEqual((second["drift_since"], second["drift_polls"], second["reconcile"]),
                         (first["drift_since"], 2, None))
        [cluster] = await self.store.clusters.list()
        self.assertEqual(cluster["drifted_nodes"], 1)
        self.assertEqual(await self.store.ops.open_of_node("n1"), [])  # report: nothing asked
        cleared = await self.poll("on")
        self.assertEqual((cleared["drift_since"], cleared["drift_observed"],
                          cleared["drift_polls"]), (None, None, 0))

    async def test_a_new_request_clears_drift(self):
        await self.node(desired="on")
        await self.poll("off")
        await self.store.ops.request("n1", "off", requester="bob")
        node = await self.store.nodes.get("n1")
        self.assertEqual((node["drift_since"], node["drift_polls"]), (None, 0))

    async def test_no_drift_while_an_operation_is_open(self):
        await self.node(desired="on")
        await self.store.clusters.set_policy("c1", "enforce")
        op = await self.store.ops.request("n1", "on", requester="bob")
        for _ in range(3):
            node = await self.poll("off")
            self.assertEqual((node["drift_since"], node["reconcile"]), (None, None))
        self.assertEqual([o["id"] for o in await self.store.ops.open_of_node("n1")], [op["id"]])
        await self.store.ops.record_outcome(op["id"], "failed", error="x")
        node = await self.poll("off")
        self.assertEqual(node["drift_polls"], 1)  # counting starts once nothing is open

    async def test_failed_polls_never_record_drift(self):
        store = self.make_store(responsive_grace=0.0)
        await self.node(desired="on")
        await store.clusters.set_policy("c1", "enforce")
        for _ in range(4):
            node = await store.nodes.record_power_state("n1", "error", error="timeout", poll=True)
            self.assertEqual((node["drift_since"], node["reconcile"]), (None, None))
        node = await store.nodes.record_power_state("n1", "unknown", poll=True)
        self.assertIsNone(node["drift_since"])
        self.assertEqual(await store.ops.open_of_node("n1"), [])

    async def test_failed_polls_keep_drift_while_responsive_and_clear_it_after(self):
        store = self.make_store(responsive_grace=0.0)
        await self.node(desired="on")
        first = await store.nodes.record_power_state("n1", "off", poll=True)
        node = await store.nodes.record_power_state("n1", "error", error="timeout", poll=True)
        self.assertEqual((node["drift_since"], node["drift_polls"]), (first["drift_since"], 1))
        for _ in range(2):
            node = await store.nodes.record_power_state("n1", "error", error="timeout", poll=True)
        self.assertFalse(node["responsive"])
        self.assertEqual((node["drift_since"], node["drift_polls"]), (None, 0))

    async def test_no_desired_state_never_drifts(self):
        await self.node()
        await self.store.clusters.set_policy("c1", "enforce")
        for state in ("on", "off", "on"):
            node = await self.poll(state)
            self.assertIsNone(node["drift_since"])
        self.assertEqual(await self.store.ops.list(node="n1"), [])

    async def test_an_action_outcome_is_not_a_poll(self):
        await self.node(desired="on")
        await self.store.clusters.set_policy("c1", "enforce")
        for queried in (False, True, True):  # a failed change; a query operation's outcome
            node = await self.store.nodes.record_power_state("n1", "off", queried=queried)
            self.assertEqual((node["drift_since"], node["reconcile"]), (None, None))
        self.assertEqual((await self.poll("off"))["drift_polls"], 1)

    async def test_enforce_journals_one_reconcile_on_the_second_poll(self):
        await self.node(desired="on")
        await self.store.clusters.set_policy("c1", "enforce")
        first = await self.poll("off")
        self.assertIsNone(first["reconcile"])
        second = await self.poll("off")
        op = second["reconcile"]
        self.assertEqual((op["action"], op["requester"], op["state"]),
                         ("on", "reconcile", "pending"))
        self.assertEqual((second["drift_since"], second["drift_polls"]), (None, 0))
        self.assertEqual([o["id"] for o in await self.store.ops.open_of_node("n1")], [op["id"]])
        for _ in range(3):  # while it is open: nothing more
            node = await self.poll("off")
            self.assertIsNone(node["reconcile"])
        self.assertEqual(len(await self.store.ops.open_of_node("n1")), 1)
        self.assertEqual((await self.store.nodes.get("n1"))["desired_state"], "on")

    async def test_enforce_asks_for_the_desired_state(self):
        await self.node(desired="off")
        await self.store.clusters.set_policy("c1", "enforce")
        self.assertIsNone((await self.poll("on"))["reconcile"])
        op = (await self.poll("on"))["reconcile"]
        self.assertEqual((op["action"], op["node"]), ("off", "n1"))

    async def test_enforce_gives_up_after_three_failed_reconciles(self):
        await self.node(desired="on")
        await self.store.clusters.set_policy("c1", "enforce")
        for _ in range(drift.MAX_RECONCILE_ATTEMPTS):
            await self.poll("off")
            op = (await self.poll("off"))["reconcile"]
            await self.store.ops.record_outcome(op["id"], "failed", error="bmc says no")
        for _ in range(3):
            node = await self.poll("off")
            self.assertIsNone(node["reconcile"])
        self.assertEqual(node["drift_polls"], 3)  # still reported
        await self.store.ops.request("n1", "on", requester="alice")  # an operator retries
        [op] = await self.store.ops.open_of_node("n1")
        await self.store.ops.record_outcome(op["id"], "failed", error="still no")
        await self.poll("off")
        self.assertEqual((await self.poll("off"))["reconcile"]["requester"], "reconcile")

    async def test_enforce_does_not_fight_an_operators_cancel(self):
        await self.node(desired="on")
        await self.store.clusters.set_policy("c1", "enforce")
        await self.poll("off")
        op = (await self.poll("off"))["reconcile"]
        await self.store.ops.record_outcome(op["id"], "cancelled", cancelled_by="alice")
        for _ in range(3):
            self.assertIsNone((await self.poll("off"))["reconcile"])

    async def test_metrics_count_drifted_nodes_not_mismatched_ones(self):
        from powerctl.region import web

        await self.node("n1", desired="on")
        await self.node("n2", desired="on")
        await self.node("n3", cluster="c2", desired="off")
        await self.poll("off", name="n1")  # drifted (and mismatched)
        await self.store.ops.request("n2", "off")  # mismatched, open: not drifted
        await self.poll("on", name="n3")
        await self.poll("on", name="n3")
        _, text = await web.Metrics(self.store).produce(None)
        text = text.decode()
        self.assertIn('powerctl_nodes_drifted{cluster="c1"} 1\n', text)
        self.assertIn('powerctl_nodes_drifted{cluster="c2"} 1\n', text)
        self.assertIn('powerctl_nodes_mismatched{cluster="c1"} 2\n', text)
        self.assertIn("# TYPE powerctl_nodes_drifted gauge", text)

    async def test_set_cluster_policy(self):
        await self.node()
        self.assertEqual(await self.store.clusters.set_policy("c1", "enforce"),
                         {"name": "c1", "drift_policy": "enforce"})
        [cluster] = await self.store.clusters.list()
        self.assertEqual(cluster["drift_policy"], "enforce")
        with self.assertRaises(InvalidInput):
            await self.store.clusters.set_policy("c1", "sometimes")
        with self.assertRaises(NotFound):
            await self.store.clusters.set_policy("nope", "report")
        self.assertEqual((await self.store.clusters.set_policy("c1", "report"))["drift_policy"],
                         "report")


# -- end to end -----------------------------------------------------------------------


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


class DriftSystemTests(SystemMixin, DatabaseMixin, unittest.TestCase):
    timeout = 60
    nodes = ("node1", "node2")

    async def start(self):
        await self.start_region()
        self.pserv = await self.start_pserv()
        await wait_until(self.connected_pservs)
        for name in self.nodes:
            await self.add_node(name)
        op = await self.power("node1", "on")
        done = await self.wait_op(op["id"])
        self.assertEqual(done["state"], "succeeded", done)
        self.assertEqual(self.sim.systems["node1"].power_state, "On")

    async def poll(self):
        """One poll round, recorded by the region once it returns."""
        await self.pserv.poller.poll_once()

    async def node(self, name="node1"):
        return await self.get(f"/v1/nodes/{name}")

    async def reconcile_ops(self, name="node1"):
        ops = await self.get(f"/v1/power_ops?node={name}")
        return [o for o in ops if o["requester"] == "reconcile"]

    async def metrics(self):
        import treq

        response = await treq.get(self.api + "/metrics", pool=self.http, headers=self.auth_headers())
        return (await treq.content(response)).decode()

    async def set_policy(self, policy, cluster="c1"):
        return await self.call("PUT", f"/v1/clusters/{cluster}", {"drift_policy": policy})
    async def test_report_shows_drift_everywhere_and_a_new_request_clears_it(self):
        await self.start()
        await self.poll()
        self.assertIsNone((await self.node())["drift"])
        self.sim.systems["node1"].power_state = "Off"  # behind powerctl's back
        await self.poll()
        node = await self.node()
        self.assertEqual(node["power_state"], "off")
        first = node["drift"]
        self.assertEqual((first["observed"], first["desired"], first["polls"]),
                         ("off", "on", 1))
        self.assertTrue(first["since"])
        await self.poll()
        second = (await self.node())["drift"]
        self.assertEqual((second["since"], second["polls"]), (first["since"], 2))
        self.assertIsNone((await self.node("node2"))["drift"])  # nothing asked of it
        self.assertEqual(await self.reconcile_ops(), [])  # report only
        self.assertEqual(self.sim.systems["node1"].power_state, "Off")
        # API: clusters; CLI: node list/show; status page; metrics.
        [cluster] = await self.get("/v1/clusters")
        self.assertEqual((cluster["drift_policy"], cluster["drifted_nodes"]), ("report", 1))
        code, out, err = await self.cli("node", "list")
        self.assertEqual(code, 0, err)
        rows = {line.split()[0]: line for line in out.splitlines()[1:]}
        self.assertIn("off (desired on)", rows["node1"])
        self.assertNotIn("desired", rows["node2"])
        code, out, err = await self.cli("node", "show", "node1")
        self.assertEqual(code, 0, err)
        self.assertRegex(out, r"drift:\s+off since \S+ \S+ \(desired on, 2 polls\)")
        code, out, err = await self.cli("node", "show", "node1", "--json")
        self.assertEqual(json.loads(out)["drift"]["observed"], "off")
        self.assertIn('powerctl_nodes_drifted{cluster="c1"} 1', await self.metrics())
        code, page = await self.call_page("/")
        nodes_table = page.split("<h2>Nodes")[1]
        row = next(r for r in nodes_table.split("<tr") if "<td>node1</td>" in r)
        self.assertIn('class="mismatch drift"', row)
        self.assertIn("drifted", row)
        code, problems = await self.call_page("/?problems=1")
        self.assertIn("<td>node1</td>", problems.split("<h2>Nodes")[1])
        # A new request clears it (and is, here, what the operator wanted).
        op = await self.power("node1", "off")
        self.assertIsNone((await self.node())["drift"])
        await self.wait_op(op["id"])
        await self.poll()
        self.assertIsNone((await self.node())["drift"])
        self.assertIn('powerctl_nodes_drifted{cluster="c1"} 0', await self.metrics())

    async def call_page(self, path):
        import treq

        response = await treq.get(self.api + path, pool=self.http, headers=self.auth_headers())
        return response.code, (await treq.content(response)).decode()
    async def test_drift_clears_when_the_desired_state_is_seen_again(self):
        await self.start()
        self.sim.systems["node1"].power_state = "Off"
        await self.poll()
        self.assertIsNotNone((await self.node())["drift"])
        self.sim.systems["node1"].power_state = "On"  # put back by hand
        await self.poll()
        self.assertIsNone((await self.node())["drift"])
    async def test_enforce_brings_the_node_back_with_one_reconcile_operation(self):
        await self.start()
        code, body = await self.set_policy("enforce")
        self.assertEqual((code, body["drift_policy"]), (200, "enforce"))
        self.sim.systems["node1"].power_state = "Off"
        await self.poll()
        self.assertEqual((await self.node())["drift"]["polls"], 1)
        self.assertEqual(await self.reconcile_ops(), [])  # not on the first sighting
        self.assertEqual(self.sim.systems["node1"].power_state, "Off")
        await self.poll()
        [op] = await self.reconcile_ops()
        self.assertEqual(op["action"], "on")
        done = await self.wait_op(op["id"])
        self.assertEqual(done["state"], "succeeded", done)
        self.assertEqual(self.sim.systems["node1"].power_state, "On")
        for _ in range(3):
            await self.poll()
        node = await self.node()
        self.assertEqual((node["power_state"], node["desired_state"], node["drift"]),
                         ("on", "on", None))
        self.assertEqual(len(await self.reconcile_ops()), 1)
        self.assertEqual(await self.reconcile_ops("node2"), [])
    async def test_a_failed_poll_never_records_drift_nor_enforces(self):
        await self.start()
        code, _ = await self.set_policy("enforce")
        self.assertEqual(code, 200)
        self.sim.systems["node1"].power_state = "Off"
        self.sim.fault("error", match="/Systems/node1")
        for _ in range(3):
            await self.poll()
            node = await self.node()
            self.assertTrue(node["last_error"])
            self.assertIsNone(node["drift"])
        self.assertEqual(await self.reconcile_ops(), [])
        self.sim.faults.clear()
        await self.poll()  # conclusive again: the first sighting only
        self.assertEqual((await self.node())["drift"]["polls"], 1)
        self.assertEqual(await self.reconcile_ops(), [])
    async def test_an_unreachable_bmc_neither_counts_nor_enforces_drift(self):
        await self.start()
        await self.set_policy("enforce")
        self.sim.systems["node1"].power_state = "Off"
        await self.poll()
        seen = (await self.node())["drift"]
        self.assertEqual(seen["polls"], 1)
        await self.sim.stop()
        for _ in range(3):
            await self.poll()
        node = await self.node()
        self.assertTrue(node["last_error"])
        self.assertTrue(node["responsive"])  # within the grace: drift is kept, not counted
        self.assertEqual(node["drift"], seen)
        self.assertEqual(await self.reconcile_ops(), [])
    async def test_cluster_policy_api_and_cli(self):
        await self.start()
        code, body = await self.set_policy("sometimes")
        self.assertEqual((code, body["error"]["code"]), (400, "invalid_input"))
        code, body = await self.call("PUT", "/v1/clusters/c1", {"drift_policy": "report",
                                                                "other": 1})
        self.assertEqual(code, 400)
        code, body = await self.set_policy("enforce", cluster="nope")
        self.assertEqual(code, 404)
        code, body = await self.call("PUT", "/v1/clusters/c1", {})
        self.assertEqual(code, 400)
        [cluster] = await self.get("/v1/clusters")
        self.assertEqual(cluster["drift_policy"], "report")
        code, out, err = await self.cli("cluster", "set", "c1", "--drift-policy", "enforce")
        self.assertEqual(code, 0, err)
        self.assertIn("enforce", out)
        [cluster] = await self.get("/v1/clusters")
        self.assertEqual(cluster["drift_policy"], "enforce")
        code, out, err = await self.cli("cluster", "list")
        self.assertEqual(code, 0, err)
        self.assertIn("DRIFT POLICY", out)
        self.assertIn("enforce", out.splitlines()[1])
        code, out, err = await self.cli("cluster", "set", "nope", "--drift-policy", "report")
        self.assertNotEqual(code, 0)
        document = await self.get("/v1/openapi.json")
        self.assertIn("put", document["paths"]["/v1/clusters/{name}"])
        self.assertIn("drift", document["components"]["schemas"]["Node"]["properties"])
        self.assertIn("drift_policy", document["components"]["schemas"]["Cluster"]["properties"])
