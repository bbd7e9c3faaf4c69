"""
The store's batch paths of issue 14 against a real PostgreSQL: a pserv's
outcomes recorded a batch per transaction
(``NodeStore.record_outcomes`` over ``OperationStore.end_many``) judge
each report exactly as ``record_outcome`` judges it one at a time, and
``OperationStore.dispatch_view`` reads what dispatching a bulk request
needs for every node at once.
"""

from powerctl.region.errors import InvalidInput, NotFound, StaleEpoch
from powerctl.region.store import Recorded
from tests.test_store import StoreTestCase, ipmi


class BatchStoreTestCase(StoreTestCase):
    def execute(self, statement, *args):
        return self.pool.runOperation(statement, args or None)


class RecordOutcomesTests(BatchStoreTestCase):
    async def fleet(self, count=3, epoch=5):
        for i in range(count):
            await self.store.nodes.create(f"n{i}", "c1", ipmi(f"10.0.0.{i + 1}"))
        await self.execute("UPDATE nodes SET owner_epoch = %s", epoch)
        return [await self.store.ops.request(f"n{i}", "on") for i in range(count)]

    async def test_a_batch_ends_every_operation_and_sets_every_node(self):
        ops = await self.fleet()
        detail = {"level": 0, "devices": [{"agent": "0:ipmi", "state": "on"}]}
        results = await self.store.nodes.record_outcomes([
            {"op_id": ops[0]["id"], "state": "succeeded", "observed_state": "on",
             "agent": "0:ipmi", "detail": detail, "pserv": "p1", "epoch": 5},
            {"op_id": ops[1]["id"], "state": "failed", "error": "timeout: no answer",
             "pserv": "p1", "epoch": 5},
            {"op_id": ops[2]["id"], "state": "superseded", "superseded_by": ops[0]["id"],
             "pserv": "p1", "epoch": 5}])
        self.assertEqual([(type(r), r.changed, r.op["state"]) for r in results],
                         [(Recorded, True, "succeeded"), (Recorded, True, "failed"),
                          (Recorded, True, "superseded")])
        first = await self.store.ops.get(ops[0]["id"])
        self.assertEqual((first["observed_state"], first["agent"], first["pserv"],
                          first["detail"]), ("on", "0:ipmi", "p1", detail))
        self.assertIsNotNone(first["finished_at"])
        self.assertEqual((await self.store.ops.get(ops[2]["id"]))["superseded_by"],
                         ops[0]["id"])
        nodes = {n["name"]: n for n in await self.store.nodes.list()}
        self.assertEqual((nodes["n0"]["power_state"], nodes["n0"]["last_error"]), ("on", None))
        self.assertEqual((nodes["n1"]["last_error"], nodes["n1"]["failed_polls"]),
                         ("timeout: no answer", 0))
        self.assertEqual(nodes["n2"]["power_state"], "unknown")

    async def test_refusals_cost_the_rest_of_the_batch_nothing(self):
        ops = await self.fleet()
        await self.execute("UPDATE nodes SET owner_epoch = 9 WHERE name = 'n1'")
        done = await self.store.ops.record_outcome(ops[2]["id"], "succeeded",
                                                   observed_state="on")
        results = await self.store.nodes.record_outcomes([
            {"op_id": ops[0]["id"], "state": "succeeded", "observed_state": "on", "epoch": 5},
            {"op_id": ops[1]["id"], "state": "succeeded", "observed_state": "on", "epoch": 5},
            {"op_id": ops[2]["id"], "state": "failed", "error": "late", "epoch": 5},
            {"op_id": 999_999, "state": "failed", "epoch": 5},
            {"op_id": ops[0]["id"], "state": "failed", "error": "again", "epoch": 5},
            {"op_id": ops[1]["id"], "state": "superseded", "superseded_by": 999_999},
            {"op_id": ops[1]["id"], "state": "superseded", "superseded_by": ops[1]["id"]},
            {"op_id": ops[1]["id"], "state": "running"},
            {"op_id": ops[1]["id"], "state": "succeeded", "observed_state": "up"},
            {"op_id": "x", "state": "failed"}])
        kinds = [type(r).__name__ for r in results]
        self.assertEqual(kinds, ["Recorded", "StaleEpoch", "Recorded", "NotFound", "Recorded",
                                 "InvalidInput", "InvalidInput", "InvalidInput",
                                 "InvalidInput", "NotFound"])
        self.assertEqual([results[i].changed for i in (0, 2, 4)], [True, False, False])
        self.assertEqual(results[2].op, done.op)  # already terminal: as it stands
        self.assertEqual(results[4].op["state"], "succeeded")  # the first report of it won
        self.assertIsInstance(results[1], StaleEpoch)
        self.assertIsInstance(results[5], InvalidInput)
        self.assertIsInstance(results[3], NotFound)
        self.assertEqual((await self.store.ops.get(ops[1]["id"]))["state"], "pending")
        self.assertEqual((await self.store.nodes.get("n1"))["power_state"], "unknown")
        self.assertEqual((await self.store.nodes.get("n0"))["power_state"], "on")

    async def test_what_no_pserv_may_report_is_refused_alone(self):
        """
        A reference that is no id at all, a detail that is no object, an
        operator's ``cancelled_by``: that report only.
        """
        ops = await self.fleet(2)
        results = await self.store.nodes.record_outcomes([
            {"op_id": ops[0]["id"], "state": "superseded", "superseded_by": "x", "epoch": 5},
            {"op_id": ops[0]["id"], "state": "succeeded", "coalesced_into": -3, "epoch": 5},
            {"op_id": ops[0]["id"], "state": "succeeded", "detail": ["on"], "epoch": 5},
            {"op_id": ops[0]["id"], "state": "cancelled", "cancelled_by": "alice", "epoch": 5},
            {"op_id": ops[1]["id"], "state": "succeeded", "observed_state": "on", "epoch": 5}])
        self.assertEqual([type(r).__name__ for r in results],
                         ["InvalidInput"] * 4 + ["Recorded"])
        for result, field in zip(results, ("superseded_by", "coalesced_into", "detail",
                                           "cancelled_by")):
            self.assertIn(field, str(result))
        self.assertEqual((await self.store.ops.get(ops[0]["id"]))["state"], "pending")
        self.assertEqual((await self.store.ops.get(ops[1]["id"]))["state"], "succeeded")

    async def test_one_by_one_and_in_a_batch_write_the_same(self):
        """The same reports, through record_outcome and record_outcomes: the same rows."""
        ops = await self.fleet(4)
        reports = [
            {"op_id": ops[0]["id"], "state": "succeeded", "observed_state": "on",
             "agent": "0:ipmi", "pserv": "p1", "epoch": 5, "detail": {"level": 0}},
            {"op_id": ops[1]["id"], "state": "failed", "error": "auth: refused",
             "pserv": "p1", "epoch": 5},
            {"op_id": ops[2]["id"], "state": "succeeded", "coalesced_into": ops[0]["id"],
             "observed_state": "on", "pserv": "p1", "epoch": 5, "detail": {"level": 1}},
            {"op_id": ops[3]["id"], "state": "cancelled", "error": "gone", "pserv": "p1",
             "epoch": 5}]
        columns = ("state, observed_state, agent, error, coalesced_into, superseded_by,"
                   " pserv, detail")
        for report in reports[:2]:
            await self.store.nodes.record_outcome(
                report["op_id"], report["state"],
                **{k: v for k, v in report.items() if k not in ("op_id", "state")})
        await self.store.nodes.record_outcomes(reports[2:])
        single = await self.sql(f"SELECT {columns} FROM power_ops WHERE id = ANY(%s)"
                                " ORDER BY id", [o["id"] for o in ops])
        await self.execute("UPDATE power_ops SET state = 'pending', observed_state = NULL,"
                       " agent = NULL, error = NULL, coalesced_into = NULL, pserv = NULL,"
                       " finished_at = NULL")
        for report in reports[2:]:
            await self.store.nodes.record_outcome(
                report["op_id"], report["state"],
                **{k: v for k, v in report.items() if k not in ("op_id", "state")})
        await self.store.nodes.record_outcomes(reports[:2])
        self.assertEqual(await self.sql(f"SELECT {columns} FROM power_ops WHERE id = ANY(%s)"
                                        " ORDER BY id", [o["id"] for o in ops]), single)
        self.assertEqual([row[-1] for row in single], [{"level": 0}, None, {"level": 1}, None])


class DispatchViewTests(BatchStoreTestCase):
    async def test_every_node_s_owner_configuration_lockouts_and_circuit(self):
        await self.store.nodes.create("a", "c1", ipmi("10.0.0.1", password="secret"))
        await self.store.nodes.create("b", "c1", ipmi("10.0.0.2"))
        await self.execute("UPDATE nodes SET owner_epoch = 3 WHERE name = 'a'")
        await self.execute("UPDATE nodes SET circuit = 'r1' WHERE name = 'b'")
        lockout = await self.store.lockouts.record("a", 0, 5, "refused", "p1")
        view = await self.store.ops.dispatch_view(["a", "b", "ghost", "a"])
        self.assertEqual(sorted(view), ["a", "b"])
        self.assertEqual((view["a"]["owner_epoch"], view["a"]["handoff_epoch"],
                          view["a"]["cluster"]), (3, None, "c1"))
        self.assertEqual(view["a"]["power"], await self.store.nodes.power_config("a"))
        self.assertEqual(view["a"]["power"]["agents"][0]["params"]["password"], "secret")
        self.assertEqual(view["a"]["lockouts"], [{"agent": 0, "id": lockout}])
        self.assertEqual((view["a"]["circuit"], view["b"]["lockouts"]), (None, []))
        self.assertEqual(view["b"]["circuit"], await self.store.nodes.circuit_config("b"))
        self.assertEqual(view["b"]["circuit"]["name"], "r1")
        self.assertEqual(await self.store.ops.dispatch_view([]), {})


class PendingTests(BatchStoreTestCase):
    async def test_the_pending_ones_of_the_ids_oldest_first(self):
        await self.store.nodes.create("a", "c1", ipmi())
        ops = [await self.store.ops.request("a", "on") for _ in range(3)]
        await self.store.ops.mark_running(ops[1]["id"], "p1")
        got = await self.store.ops.pending([ops[2]["id"], ops[1]["id"], ops[0]["id"],
                                            999_999, "x", -1])
        self.assertEqual([o["id"] for o in got], [ops[0]["id"], ops[2]["id"]])
        self.assertEqual(got[0]["node"], "a")
        self.assertEqual(await self.store.ops.pending(["x"]), [])
