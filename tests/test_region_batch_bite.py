"""
The region's batch paths of issue 14 (``PowerMany`` pages, ``ReportOutcomes``
batches, dispatch turns, NOTIFY drains) where mutation testing (``make
mutate``, 2026-12-05) showed no test would notice a small bug.

No database and no sockets: the real :class:`Region` and its AMP responder
over the in-memory store and leases of :mod:`powerctl.testing.region`, and
time is a :class:`twisted.internet.task.Clock`.
"""

import json

from twisted.internet import address, defer, error, task
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from powerctl.region import core, rpc
from powerctl.region.core import Region
from powerctl.region.errors import InvalidInput, StaleEpoch
from powerctl.rpc import commands
from powerctl.testing.region import FakeLeases, FakeRegionStore

SECRET = b"batch-bite"
POWER = {"mode": "single", "agents": [{"driver": "manual", "params": {}}]}


def region_for(store=None, clock=None):
    store = store or FakeRegionStore()
    return Region("r1", store, SECRET, clock or task.Clock(), leases=FakeLeases(store))


def leased(region, epoch=7):
    """A connection that authenticated and registered pserv ``p1`` of ``c1`` under ``epoch``."""
    protocol = rpc.RegionProtocol(region)
    protocol.makeConnection(StringTransport())
    protocol.gate.open = True
    protocol._stop_auth_timer()
    protocol.cluster, protocol.pserv, protocol.epoch = "c1", "p1", epoch
    return protocol


def text(items):
    return json.dumps(items, separators=(",", ":"))


class PageSizeTests(unittest.TestCase):
    def test_a_page_exactly_as_long_as_the_limit_goes_whole(self):
        """``size`` is the JSON list's length: a page of exactly that many bytes fits."""
        items = [{"id": i, "pad": "x" * 40} for i in range(3)]
        size = len(text(items))
        self.assertEqual([len(p) for p in core.pages(items, 100, size=size)], [3])
        # a byte less and the last item goes on a page of its own
        self.assertEqual([len(p) for p in core.pages(items, 100, size=size - 1)], [2, 1])

    def test_every_page_after_the_first_is_measured_the_same_way(self):
        items = [{"id": i, "pad": "x" * 40} for i in range(6)]
        size = len(text(items[:3]))
        pages = list(core.pages(items, 100, size=size))
        self.assertEqual([len(p) for p in pages], [3, 3])
        self.assertEqual([len(text(p)) for p in pages], [size, size])
        self.assertEqual([len(p) for p in core.pages(items, 100, size=size - 1)],
                         [2, 2, 2])


class ReportOutcomeDetailTests(unittest.TestCase):
    """``ReportOutcome``'s ``detail``: a JSON object is journalled, anything else refused."""

    def setUp(self):
        self.store = FakeRegionStore()
        self.store.add_node("n1", "c1", POWER, owner_epoch=7)
        self.op = self.store.add_op("n1", "on", state="running", pserv="p1")
        self.protocol = leased(region_for(self.store))

    def report(self, detail):
        return self.protocol.report_outcome(
            operation_id=self.op["id"], outcome="succeeded", observed_state="on", agent="",
            error="", coalesced_into=0, superseded_by=0, epoch=7, detail=detail)

    async def test_an_object_is_journalled_with_the_outcome(self):
        detail = {"acting": "pdu", "devices": {"pdu1": "on"}}
        self.assertEqual(await self.report(detail), {"recorded": True})
        row = self.store.op_rows[self.op["id"]]
        self.assertEqual((row["state"], row["observed_state"], row["detail"]),
                         ("succeeded", "on", detail))

    async def test_empty_texts_reach_the_journal_as_none(self):
        self.assertEqual(await self.protocol.report_outcome(
            operation_id=self.op["id"], outcome="failed", observed_state="", agent="",
            error="", coalesced_into=0, superseded_by=0, epoch=7), {"recorded": True})
        row = self.store.op_rows[self.op["id"]]
        self.assertEqual((row["state"], row["observed_state"], row["agent"], row["error"],
                          row["coalesced_into"], row["superseded_by"]),
                         ("failed", None, None, None, None, None))

    async def test_anything_but_an_object_is_bad_arguments_and_changes_nothing(self):
        for detail in ([1, 2], "text", 3):
            with self.assertRaises(commands.BadArguments):
                await self.report(detail)
        self.assertEqual(self.store.op_rows[self.op["id"]]["state"], "running")


def good_report(**changes):
    report = {"operation_id": 5, "outcome": "failed", "observed_state": "off",
              "agent": "ipmi", "error": "timed out", "error_kind": "transport",
              "coalesced_into": 3, "superseded_by": 4, "detail": {"a": 1}}
    report.update(changes)
    return report


class OutcomeReportTests(unittest.TestCase):
    """One report of a ``ReportOutcomes`` batch, checked as ``ReportOutcome``'s arguments."""

    def test_a_full_report_becomes_outcome_s_arguments(self):
        self.assertEqual(rpc._outcome_report(good_report()), {
            "op_id": 5, "state": "failed", "observed_state": "off", "agent": "ipmi",
            "error": "transport: timed out", "detail": {"a": 1},
            "coalesced_into": 3, "superseded_by": 4})

    def test_absent_and_empty_fields_are_none(self):
        self.assertEqual(rpc._outcome_report({"operation_id": 5, "outcome": "succeeded"}), {
            "op_id": 5, "state": "succeeded", "observed_state": None, "agent": None,
            "error": None, "detail": None, "coalesced_into": None, "superseded_by": None})
        self.assertEqual(rpc._outcome_report(good_report(
            observed_state="", agent="", error="", error_kind="", coalesced_into=0,
            superseded_by=0, detail=None)), {
            "op_id": 5, "state": "failed", "observed_state": None, "agent": None,
            "error": None, "detail": None, "coalesced_into": None, "superseded_by": None})

    def test_an_error_or_a_kind_alone_is_an_error(self):
        self.assertEqual(rpc._outcome_report(good_report(error_kind=""))["error"], "timed out")
        self.assertEqual(rpc._outcome_report(good_report(error=""))["error"], "transport: ")

    def test_each_observed_state_a_pserv_may_report(self):
        for observed in ("on", "off"):
            self.assertEqual(
                rpc._outcome_report(good_report(observed_state=observed))["observed_state"],
                observed)

    def test_each_wrong_field_is_refused_naming_it(self):
        for change, word in (
            ({"operation_id": True}, "operation_id"), ({"operation_id": 5.0}, "operation_id"),
            ({"outcome": "running"}, "outcome"), ({"observed_state": "error"}, "observed"),
            ({"agent": 3}, "agent"), ({"error": ["x"]}, "error"),
            ({"error_kind": {"k": 1}}, "error_kind"), ({"coalesced_into": "3"}, "coalesced_into"),
            ({"superseded_by": 4.0}, "superseded_by"), ({"superseded_by": True}, "superseded_by"),
            ({"detail": [1]}, "detail"),
        ):
            with self.assertRaises(commands.BadArguments, msg=str(change)) as caught:
                rpc._outcome_report(good_report(**change))
            self.assertIn(word, str(caught.exception), change)

    def test_the_operation_id_of_a_refusal_is_zero_unless_it_is_an_integer(self):
        self.assertEqual(rpc._op_id_of({"operation_id": 12}), 12)
        for report in ({"operation_id": "12"}, {"operation_id": True}, {}, ["operation_id"]):
            self.assertEqual(rpc._op_id_of(report), 0, report)


class ReportOutcomesTests(unittest.TestCase):
    """What a ``ReportOutcomes`` batch answers: how many changed the journal, and each refusal."""

    def setUp(self):
        self.store = FakeRegionStore()
        self.store.add_node("n1", "c1", POWER, owner_epoch=7)
        self.store.add_node("n2", "c1", POWER, owner_epoch=9)  # handed over meanwhile
        self.ops = [self.store.add_op(n, "on", state="running", pserv="p1")
                    for n in ("n1", "n1", "n2")]
        self.protocol = leased(region_for(self.store))

    async def test_recorded_counts_only_reports_that_changed_the_journal(self):
        first, second, _ = (op["id"] for op in self.ops)
        answer = await self.protocol.report_outcomes(epoch=7, reports=[
            {"operation_id": first, "outcome": "succeeded"},
            {"operation_id": first, "outcome": "failed"},  # already ended: no change
            {"operation_id": second, "outcome": "succeeded"}])
        self.assertEqual(answer, {"recorded": 2, "refused": []})

    async def test_a_report_on_a_node_the_epoch_lost_is_refused_alone(self):
        first, _, moved = (op["id"] for op in self.ops)
        answer = await self.protocol.report_outcomes(epoch=7, reports=[
            {"operation_id": moved, "outcome": "succeeded"},
            {"operation_id": first, "outcome": "succeeded"}])
        self.assertEqual(answer["recorded"], 1)
        [refusal] = answer["refused"]
        self.assertEqual((refusal["operation_id"], refusal["code"]), (moved, "STALE_EPOCH"))
        self.assertEqual(self.store.op_rows[moved]["state"], "running")

    async def test_a_report_the_store_refuses_is_bad_arguments_alone(self):
        first, second, _ = (op["id"] for op in self.ops)
        record = self.store.nodes.record_outcomes

        async def refusing_the_first(reports):
            results = await record(reports[1:])
            return [InvalidInput("coalesced_into: power operation 99 does not exist")] + results

        self.store.nodes.record_outcomes = refusing_the_first
        answer = await self.protocol.report_outcomes(epoch=7, reports=[
            {"operation_id": first, "outcome": "succeeded", "coalesced_into": 99},
            {"operation_id": second, "outcome": "succeeded"}])
        self.assertEqual(answer, {"recorded": 1, "refused": [{
            "operation_id": first, "code": "BAD_ARGUMENTS",
            "why": "coalesced_into: power operation 99 does not exist"}]})

    async def test_nothing_acceptable_records_nothing_and_asks_the_store_nothing(self):
        answer = await self.protocol.report_outcomes(epoch=7, reports=[{"outcome": "x"}])
        self.assertEqual(answer["recorded"], 0)
        self.assertEqual([c for c in self.store.calls if c[0] == "record_outcomes"], [])

    async def test_reports_must_be_a_list(self):
        with self.assertRaises(commands.BadArguments):
            await self.protocol.report_outcomes(epoch=7, reports={"operation_id": 1})

    async def test_a_refusal_s_reason_is_cut_to_500_characters(self):
        long_name = "x" * 600
        answer = await self.protocol.report_outcomes(epoch=7, reports=[
            {"operation_id": 1, "outcome": long_name}])
        [refusal] = answer["refused"]
        self.assertEqual(len(refusal["why"]), 500)
        self.assertTrue(refusal["why"].startswith("reports[0]: unknown outcome"))

    async def test_every_kind_of_refusal_s_reason_is_cut_to_500_characters(self):
        first, second, _ = (op["id"] for op in self.ops)

        async def refusing(reports):
            return [StaleEpoch("s" * 600), InvalidInput("i" * 600)]

        self.store.nodes.record_outcomes = refusing
        answer = await self.protocol.report_outcomes(epoch=7, reports=[
            {"operation_id": first, "outcome": "succeeded"},
            {"operation_id": second, "outcome": "succeeded"}])
        self.assertEqual(answer, {"recorded": 0, "refused": [
            {"operation_id": first, "code": "STALE_EPOCH", "why": "s" * 500},
            {"operation_id": second, "code": "BAD_ARGUMENTS", "why": "i" * 500}]})


class Pserv:
    """A registered pserv's connection answering every ``PowerMany`` with ``answer(page)``."""

    def __init__(self, answer, epoch=7, cluster="c1"):
        self.pserv, self.cluster, self.epoch, self.in_flight = "p1", cluster, epoch, 0
        self.answer = answer
        self.pages = []

    def callRemote(self, command, **kwargs):
        assert command is commands.PowerMany, command
        self.pages.append([item["id"] for item in kwargs["operations"]])
        return defer.maybeDeferred(self.answer, kwargs["operations"])


class DispatchPageTests(unittest.TestCase):
    """How ``Region.dispatch_many`` reads a pserv's ``PowerMany`` answer, item by item."""

    def setUp(self):
        self.store = FakeRegionStore()
        for name in ("n1", "n2", "n3"):
            self.store.add_node(name, "c1", POWER, owner_epoch=7)
        self.ops = [self.store.add_op(name, "on") for name in ("n1", "n2", "n3")]
        self.ids = [op["id"] for op in self.ops]
        self.region = region_for(self.store)

    def dispatch(self, answer):
        pserv = Pserv(answer)
        self.region.directory.add(pserv)
        results = self.successResultOf(defer.ensureDeferred(self.region.dispatch_many(self.ops)))
        return pserv, results

    def marked(self):
        return [c[1] for c in self.store.calls if c[0] == "mark_running_many"]

    def test_a_config_the_pserv_refuses_fails_that_operation_alone(self):
        first, second, third = self.ids

        def answer(page):
            return {"results": [
                {"id": first, "refused": "INVALID_POWER_CONFIG", "error": "e" * 1500},
                {"id": second, "disposition": "started"},
                {"id": third, "refused": "BUSY"}]}

        _, results = self.dispatch(answer)
        self.assertEqual(results, {first: "failed", second: "started", third: "pending"})
        failed = self.store.op_rows[first]
        self.assertEqual((failed["state"], failed["pserv"]), ("failed", "p1"))
        self.assertEqual(failed["error"], "config: " + "e" * 1000)
        self.assertEqual(self.marked(), [[second]])
        self.assertEqual(self.store.op_rows[third]["state"], "pending")

    def test_an_operation_deleted_meanwhile_is_skipped_when_marked_running(self):
        # as the real store: its UPDATE finds no row for it
        first, second, third = self.ids
        del self.store.op_rows[second]
        self.successResultOf(defer.ensureDeferred(
            self.store.mark_running_many([first, second, third], "p1", 7)))
        self.assertEqual([self.store.op_rows[i]["state"] for i in (first, third)],
                         ["running", "running"])

    def test_answers_that_name_no_operation_of_the_page_are_ignored(self):
        first, second, third = self.ids

        def answer(page):
            return {"results": [
                "started", None, {"id": 999, "disposition": "started"},
                {"disposition": "started"}, {"id": first, "disposition": 3},
                {"id": second, "disposition": "known"}]}

        _, results = self.dispatch(answer)
        self.assertEqual(results, {first: "pending", second: "known", third: "pending"})
        self.assertEqual(self.marked(), [[second]])

    def test_results_that_are_no_list_leave_the_page_pending(self):
        _, results = self.dispatch(lambda page: {"results": {"id": self.ids[0]}})
        self.assertEqual(results, dict.fromkeys(self.ids, "pending"))
        self.assertEqual(self.marked(), [])

    def test_a_page_nothing_of_which_started_writes_nothing(self):
        _, results = self.dispatch(lambda page: {"results": [
            {"id": i, "refused": "BUSY"} for i in self.ids]})
        self.assertEqual(set(results.values()), {"pending"})
        self.assertEqual(self.marked(), [])

    def test_a_pserv_s_bug_is_logged_with_its_cause_and_the_page_stays_pending(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def answer(page):
            raise ZeroDivisionError("a bug")

        _, results = self.dispatch(answer)
        self.assertEqual(results, dict.fromkeys(self.ids, "pending"))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        [event] = [e for e in events if "log_failure" in e]
        self.assertIn(f"3 operation(s) from {self.ids[0]} to p1 failed unexpectedly",
                      formatEvent(event))

    def test_an_expected_failure_is_a_warning_and_the_page_stays_pending(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def answer(page):
            raise commands.BadArguments("no")

        _, results = self.dispatch(answer)
        self.assertEqual(results, dict.fromkeys(self.ids, "pending"))
        self.assertEqual([e for e in events if "log_failure" in e], [])
        self.assertTrue(any(f"3 operation(s) from {self.ids[0]} to p1 failed: "
                            in formatEvent(e) for e in events))

    def test_only_fences_need_no_batch_read(self):
        fence = self.store.add_op("n1", "fence")
        results = self.successResultOf(defer.ensureDeferred(self.region.dispatch_many([fence])))
        self.assertEqual(results, {fence["id"]: "pending"})  # no pserv connected here
        self.assertEqual([c for c in self.store.calls if c[0] == "dispatch_view"], [])


class OutcomesTests(unittest.TestCase):
    async def test_a_report_on_an_unknown_operation_is_false_and_warned_of(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        store = FakeRegionStore()
        store.add_node("n1", "c1", POWER, owner_epoch=7)
        op = store.add_op("n1", "on", state="running", pserv="p1")
        answers = await region_for(store).outcomes(
            [{"op_id": 4242, "state": "succeeded"}, {"op_id": op["id"], "state": "succeeded"}],
            "p1", 7)
        self.assertEqual(answers, [False, True])
        self.assertTrue(any("reported on operation 4242, which does not exist"
                            in formatEvent(e) for e in events))


class PolledTests(unittest.TestCase):
    """A poll batch whose drift the store answered with ``reconcile`` operations."""

    async def test_each_reconcile_operation_is_dispatched_and_the_others_are_not(self):
        store = FakeRegionStore()
        fix = store.add_op("n1", "on")

        async def record_polls(reports):
            return ({"n1": {"name": "n1", "desired_state": "on", "power_state": "off",
                            "reconcile": fix},
                     "n2": {"name": "n2", "desired_state": None, "power_state": "on",
                            "reconcile": None}}, ["gone"], {"bad": "why"})

        store.nodes.record_polls = record_polls
        region = region_for(store)
        recorded, missing, refused = await region.polled([("n1", "off", None)])
        self.assertEqual(list(region._dispatched), [fix["id"]])
        self.assertEqual(recorded, {"n1": {"name": "n1", "desired_state": "on",
                                           "power_state": "off"},
                                    "n2": {"name": "n2", "desired_state": None,
                                           "power_state": "on"}})
        self.assertEqual((missing, refused), (["gone"], {"bad": "why"}))


# -- core paths no socketless test ran (found with a line trace) ---------------

from powerctl.region.errors import Conflict, Unavailable  # noqa: E402
from tests.test_region_core_bite import (  # noqa: E402
    PENDING, FakeProtocol, FakeStore, make_region, owner)
from tests.test_region_core_bite import FakeLeases as OwnerLeases  # noqa: E402

MANUAL = {"mode": "single", "agents": [{"driver": "manual", "params": {}}]}


def logged(test):
    events = []
    globalLogPublisher.addObserver(events.append)
    test.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


class ConfirmOpTests(unittest.TestCase):
    def region(self, state="running", power=MANUAL, answers=None):
        store = FakeStore(ops=[dict(PENDING, state=state, pserv="p1")],
                          nodes=[{"name": "n1", "cluster": "c1", "power": power}])
        region = make_region(store)
        if answers is not None:
            region.directory.add(FakeProtocol("p1", answers=answers))
        return region, store

    async def test_a_confirmation_a_pserv_took_is_attributed(self):
        region, store = self.region(answers={commands.ConfirmOperation: {}})
        await region.confirm_op(1, "off", by="alice")
        self.assertEqual(store.operator, [(1, "confirmed_by", "alice", True)])

    async def test_no_pserv_that_could_confirm_is_unavailable(self):
        region, store = self.region(answers={commands.ConfirmOperation: error.ConnectionDone()})
        with self.assertRaises(Unavailable):
            await region.confirm_op(1, "on", by="alice")
        region, store = self.region()
        with self.assertRaises(Unavailable):
            await region.confirm_op(1, "on", by="alice")
        self.assertEqual(store.operator, [])

    async def test_what_cannot_be_confirmed_asks_no_pserv(self):
        for state, power, target, refusal in (
                ("running", MANUAL, "cycle", InvalidInput),
                ("succeeded", MANUAL, "on", Conflict),
                ("failed", MANUAL, "on", Conflict),
                ("running", POWER | {"agents": [{"driver": "ipmi", "params": {}}]}, "on",
                 InvalidInput)):
            protocol = FakeProtocol("p1", answers={commands.ConfirmOperation: {}})
            region, store = self.region(state=state, power=power)
            region.directory.add(protocol)
            with self.assertRaises(refusal, msg=(state, target)):
                await region.confirm_op(1, target, by="alice")
            self.assertEqual((protocol.calls, store.operator), ([], []), (state, target))


class ClearLockoutTests(unittest.TestCase):
    async def test_every_pserv_of_the_cluster_is_told_and_a_silent_one_warned_of(self):
        events = logged(self)
        store = FakeStore()
        store.lockouts = type(store.lockouts)(lambda node: "c1")
        await store.lockouts.record("n1", 0, 5, "refused", "p1")
        region = make_region(store)
        told = FakeProtocol("p1", answers={commands.ClearLockout: {}})
        silent = FakeProtocol("p2", answers={commands.ClearLockout: error.ConnectionDone()})
        other = FakeProtocol("p3", cluster="c2", answers={commands.ClearLockout: {}})
        for protocol in (told, silent, other):
            region.directory.add(protocol)
        cleared = await region.clear_lockout("n1")
        self.assertEqual([(r["node"], r["agent"]) for r in cleared], [("n1", 0)])
        self.assertEqual([told.sent(commands.ClearLockout), silent.sent(commands.ClearLockout),
                          other.calls], [[{"node": "n1"}], [{"node": "n1"}], []])
        warned = [formatEvent(e) for e in events if "did not confirm the clearing" in
                  e.get("log_format", "")]
        self.assertEqual(len(warned), 1)
        self.assertIn("pserv p2", warned[0])


class SingleDispatchFailureTests(unittest.TestCase):
    def region(self, error):
        region = make_region(FakeStore(ops=[PENDING]), OwnerLeases({"n1": owner(7)}))
        region.directory.add(FakeProtocol("p1", epoch=7, answers={commands.PowerOn: error}))
        return region

    async def test_a_bug_behind_a_dispatch_is_logged_with_its_cause(self):
        events = logged(self)
        region = self.region(ZeroDivisionError("bug"))
        self.assertEqual(await region.dispatch(dict(PENDING)), "pending")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual([e for e in events if "log_failure" not in e
                          and "failed:" in e.get("log_format", "")], [])

    async def test_an_expected_failure_is_a_warning(self):
        events = logged(self)
        region = self.region(commands.BadArguments("no"))
        self.assertEqual(await region.dispatch(dict(PENDING)), "pending")
        self.assertEqual([e for e in events if "log_failure" in e], [])
        self.assertTrue(any("dispatch of 1 to p1 failed: " in formatEvent(e) for e in events))


class DispatchManyUnresolvableTests(unittest.TestCase):
    async def test_a_node_whose_configuration_no_longer_resolves_fails_alone(self):
        events = logged(self)
        store = FakeRegionStore()
        for name in ("n1", "n2"):
            store.add_node(name, "c1", POWER, owner_epoch=7)
        ops = [store.add_op(name, "on") for name in ("n1", "n2")]
        view = store.ops.dispatch_view

        async def unresolvable_n1(names):
            answer = await view(names)
            answer["n1"].update(power=None, power_error="pod manager 'pm' is gone")
            return answer

        store.ops.dispatch_view = unresolvable_n1
        region = region_for(store)
        pserv = Pserv(lambda page: {"results": [{"id": i, "disposition": "started"}
                                                for i in (item["id"] for item in page)]})
        region.directory.add(pserv)
        results = await region.dispatch_many(ops)
        self.assertEqual(results, {ops[0]["id"]: "failed", ops[1]["id"]: "started"})
        self.assertEqual(pserv.pages, [[ops[1]["id"]]])
        failed = store.op_rows[ops[0]["id"]]
        self.assertEqual((failed["state"], failed["pserv"], failed["error"]),
                         ("failed", "p1", "config: pod manager 'pm' is gone"))
        self.assertTrue(any("no longer resolves" in e.get("log_format", "") for e in events))


class NotifyWithoutPservsTests(unittest.TestCase):
    async def test_a_region_with_no_pserv_reads_nothing_for_a_notify(self):
        store = FakeStore(ops=[PENDING])
        region = make_region(store)
        await region.notified("power_ops", "1")
        self.assertEqual(store.fetched, [])
        self.assertEqual(region._notified, {})


class RefreshFailureTests(unittest.TestCase):
    def test_a_refresh_failing_with_a_bug_is_logged_as_one(self):
        events = logged(self)
        region = make_region()
        region.directory.add(FakeProtocol("p1", answers={commands.Refresh: ZeroDivisionError()}))
        region.directory.add(FakeProtocol("p2", answers={commands.Refresh: error.ConnectionDone()}))
        region.refresh_cluster("c1")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        warned = [formatEvent(e) for e in events if "did not take a refresh" in
                  e.get("log_format", "")]
        self.assertEqual(len(warned), 1)
        self.assertIn("p2", warned[0])


# -- rpc paths no socketless test ran (found with a line trace) ----------------


class RecoverItemTests(unittest.TestCase):
    def test_an_item_carries_its_node_s_circuit_only_when_it_has_one(self):
        circuit = {"name": "rack1", "max_on": 4, "spacing": 0.5}
        self.assertEqual(rpc._op_json({"id": 1, "node": "n1", "action": "on", "power": POWER,
                                       "circuit": circuit}),
                         {"id": 1, "node": "n1", "action": "on", "power": POWER,
                          "circuit": circuit})
        self.assertEqual(rpc._node_json({"node": "n1", "desired_state": None, "power": POWER,
                                         "circuit": None}, [{"agent": 0, "id": 3}]),
                         {"name": "n1", "desired_state": None, "power": POWER,
                          "lockouts": [{"agent": 0, "id": 3}]})


class RegisterRefusedTests(unittest.TestCase):
    async def test_a_registration_the_store_refuses_is_bad_arguments(self):
        store = FakeRegionStore()

        async def refusing(name, cluster, version, region):
            raise InvalidInput("version: longer than 255 characters")

        store.clusters.register_pserv = refusing
        region = region_for(store)
        protocol = rpc.RegionProtocol(region)
        protocol.makeConnection(StringTransport())
        protocol.gate.open = True
        with self.assertRaises(commands.BadArguments) as caught:
            await protocol.register(cluster="c1", name="p1", version="v" * 256, instance="i")
        self.assertIn("version", str(caught.exception))
        self.assertEqual((protocol.pserv, region.directory.all()), (None, []))


class SingleReportStaleTests(unittest.TestCase):
    async def test_an_outcome_on_a_node_the_epoch_lost_is_stale_epoch(self):
        events = logged(self)
        store = FakeRegionStore()
        store.add_node("n1", "c1", POWER, owner_epoch=9)  # handed over meanwhile
        op = store.add_op("n1", "on", state="running", pserv="p1")
        protocol = leased(region_for(store))
        with self.assertRaises(commands.StaleEpoch):
            await protocol.report_outcome(
                operation_id=op["id"], outcome="succeeded", observed_state="on", agent="",
                error="", coalesced_into=0, superseded_by=0, epoch=7)
        self.assertEqual(store.op_rows[op["id"]]["state"], "running")
        self.assertTrue(any("pserv p1: epoch 7 does not own node n1" in formatEvent(e)
                            for e in events))


class RefusedPollTests(unittest.TestCase):
    async def test_each_poll_report_the_store_refused_is_warned_of(self):
        events = logged(self)
        store = FakeRegionStore()
        for name in ("n1", "n2"):
            store.add_node(name, "c1", POWER, owner_epoch=7)

        async def record_polls(reports):
            return {}, [], {"n1": "error: longer than 4096 characters", "n2": "why not"}

        store.nodes.record_polls = record_polls
        protocol = leased(region_for(store))
        await protocol.report_power_state(
            states=[{"node": "n1", "state": "on"}, {"node": "n2", "state": "off"}], epoch=7)
        warned = sorted(formatEvent(e) for e in events
                        if "refused: {why}" in e.get("log_format", ""))
        self.assertEqual(warned, [
            "pserv p1: report for node n1 refused: error: longer than 4096 characters",
            "pserv p1: report for node n2 refused: why not"])


class PendingFloodTests(unittest.TestCase):
    def test_an_address_over_its_limit_is_closed_and_logged_once(self):
        events = logged(self)
        region = region_for()
        region.pending_peers.limit = 1
        transports = []
        for _ in range(4):
            transport = StringTransport(peerAddress=address.IPv4Address("TCP", "10.1.1.1", 4))
            rpc.RegionProtocol(region).makeConnection(transport)
            transports.append(transport)
        self.assertEqual([t.disconnecting for t in transports], [False, True, True, True])
        self.assertEqual(region.pending_peers.pending("10.1.1.1"), 1)
        flood = [e for e in events if "have not authenticated" in e.get("log_format", "")]
        self.assertEqual(len(flood), 1)


class RecoverFullOperationPageTests(unittest.TestCase):
    async def test_a_full_page_of_usable_operations_ends_at_its_last_one(self):
        from tests import test_region_rpc_bite as bite

        store = bite.FakeStore(ops=[bite.op(i) for i in (1, 2, 3, 4)])
        self.patch(rpc, "PAGE", 3)
        protocol = bite.leased(bite.region_for(store))
        page = await protocol.recover(after_op=0, after_node="")
        self.assertEqual(([o["id"] for o in page["operations"]], page["after_op"],
                          page["done"]), ([1, 2, 3], 3, False))
        page = await protocol.recover(after_op=page["after_op"], after_node="")
        self.assertEqual([o["id"] for o in page["operations"]], [4])


class PollShapeTests(unittest.TestCase):
    async def test_a_list_with_one_malformed_state_is_refused_whole(self):
        store = FakeRegionStore()
        store.add_node("n1", "c1", POWER, owner_epoch=7)
        protocol = leased(region_for(store))
        for states in ([{"node": "n1", "state": "on"}, {"node": "n1", "state": "bogus"}],
                       [{"node": "n1", "state": "on"}, "n1"],
                       [{"node": 1, "state": "on"}]):
            with self.assertRaises(commands.BadArguments, msg=states):
                await protocol.report_power_state(states=states, epoch=7)
        self.assertEqual([c for c in store.calls if c[0] == "record_polls"], [])
