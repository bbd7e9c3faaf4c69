"""
The store's row locks, with two transactions at once (PostgreSQL): what
mutation testing (``make mutate``) showed no one-transaction test can see.

A node's reconfiguration is held open half-way -- its ``quiesce`` callback,
awaited with the node's row locked and the new power document validated,
is a Deferred the test fires -- while a second transaction runs on another
pooled connection.  A third connection watches ``pg_stat_activity`` to
tell a transaction waiting on a lock from one that went ahead.  (Also
here: a pod manager's new credentials clearing its nodes' lock-outs.)
"""

import psycopg2
from twisted.internet import defer, reactor, task

from powerctl.region.errors import Conflict
from tests.test_store import StoreTestCase, ipmi, pod_agent

PM = ("rack-1", "https://10.1.0.1", "u", "p", "")


class HeldReconfiguration:
    """``store.nodes.update(name, power=...)`` paused in its ``quiesce``."""

    def __init__(self, store, name, power):
        self.gate = defer.Deferred()
        self.reached = defer.Deferred()

        def quiesce(node):
            self.reached.callback(node)
            return self.gate

        self.done = defer.ensureDeferred(store.nodes.update(name, power=power,
                                                            quiesce=quiesce, by="test"))

    def finish(self):
        self.gate.callback([])  # no operation was cancelled
        return self.done


class LockTests(StoreTestCase):
    def held(self, name, power):
        held = HeldReconfiguration(self.store, name, power)
        # a failed assertion must not leave the transaction open at tear-down
        self.addCleanup(lambda: None if held.gate.called else held.finish())
        return held

    def watcher(self):
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        self.addCleanup(conn.close)
        return conn

    async def outcome(self, watcher, d):
        """
        "waits" once ``d`` (a store call) waits on a lock, "went ahead"
        once it fired without waiting.
        """
        fired = []

        def note(result):
            fired.append(True)
            return result

        d.addBoth(note)
        for _ in range(400):
            if fired:
                return "went ahead"
            with watcher.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type"
                            " = 'Lock' AND datname = current_database()")
                if cur.fetchone()[0] > 0:
                    return "waits"
            await task.deferLater(reactor, 0.025, lambda: None)
        self.fail("neither waited nor went ahead")

    async def test_a_pod_manager_being_linked_to_a_node_cannot_be_deleted_meanwhile(self):
        """
        The node's transaction holds the pod manager it validated against
        (FOR SHARE) until it commits: the deletion waits, then sees the new
        user and is refused.  Without the lock the deletion would go ahead
        and the node's change fail on the foreign key instead.
        """
        pm = await self.store.pod_managers.create("rack-1", "https://10.1.0.1", "u", "p", "")
        await self.store.nodes.create("n1", "c1", ipmi())
        held = self.held("n1", pod_agent(pm["uuid"]))
        await held.reached
        deleting = defer.ensureDeferred(self.store.pod_managers.delete(pm["uuid"]))
        self.assertEqual(await self.outcome(self.watcher(), deleting), "waits")
        node = await held.finish()
        self.assertTrue(node["changed_for_pserv"])
        with self.assertRaises(Conflict) as refused:
            await deleting
        self.assertIn("'rack-1' is used by 'n1'", str(refused.exception))
        self.assertEqual((await self.store.pod_managers.get(pm["uuid"]))["name"], "rack-1")
        self.assertEqual(await self.sql("SELECT node FROM node_pod_managers"), [("n1",)])

    async def test_reading_a_node_does_not_wait_for_its_reconfiguration(self):
        """
        A reconfiguration holds the node's row while its pserv quiets the
        device (up to a timeout): plain reads -- the API's GET, a pserv's
        configuration -- answer meanwhile, with the configuration committed.
        """
        await self.store.nodes.create("n1", "c1", ipmi(host="10.0.0.5"))
        held = self.held("n1", ipmi(host="10.0.0.6"))
        await held.reached
        watcher = self.watcher()
        reading = defer.ensureDeferred(self.store.nodes.get("n1"))
        self.assertEqual(await self.outcome(watcher, reading), "went ahead")
        node = await reading
        self.assertEqual(node["power"]["agents"][0]["params"]["host"], "10.0.0.5")
        config = defer.ensureDeferred(self.store.nodes.power_config("n1"))
        self.assertEqual(await self.outcome(watcher, config), "went ahead")
        self.assertEqual((await config)["agents"][0]["params"]["host"], "10.0.0.5")
        await held.finish()
        self.assertEqual((await self.store.nodes.get("n1"))["power"]["agents"][0]["params"]
                         ["host"], "10.0.0.6")

    async def test_reading_a_node_s_configuration_does_not_wait_for_its_pod_manager(self):
        """
        Plain reads of pod managers (a node's configuration for a pserv, a
        recovery page) take no lock: an edit of the pod manager in progress
        (its row FOR UPDATE) does not hold them up.
        """
        pm = await self.store.pod_managers.create(*PM)
        await self.store.nodes.create("n1", "c1", pod_agent(pm["uuid"]))
        editor = psycopg2.connect(self.dsn)
        self.addCleanup(editor.close)
        with editor.cursor() as cur:
            cur.execute("SELECT 1 FROM pod_managers WHERE uuid = %s FOR UPDATE", (pm["uuid"],))
        reading = defer.ensureDeferred(self.store.nodes.power_config("n1"))
        self.assertEqual(await self.outcome(self.watcher(), reading), "went ahead")
        self.assertEqual((await reading)["agents"][0]["params"]["username"], "u")
        editor.rollback()


class PodManagerCredentialsTests(StoreTestCase):
    async def test_new_credentials_of_a_pod_manager_clear_its_nodes_lockouts_only(self):
        """Issue 10: the nodes using it have new credentials; an edit of the description does not."""
        pm = await self.store.pod_managers.create(*PM)
        await self.store.nodes.create("n1", "c1", pod_agent(pm["uuid"]))
        await self.store.nodes.create("n2", "c1", ipmi())
        for node in ("n1", "n2"):
            await self.store.lockouts.record(node, 0, 3, "3 refused", "p1")
        await self.store.pod_managers.update(pm["uuid"], description="row 2")
        self.assertEqual(sorted(await self.store.lockouts.of_nodes(["n1", "n2"])), ["n1", "n2"])
        await self.store.pod_managers.update(pm["uuid"], password="new")
        self.assertEqual(sorted(await self.store.lockouts.of_nodes(["n1", "n2"])), ["n2"])

    async def test_pod_managers_page_by_name(self):
        for name in ("rack-1", "rack-2", "rack-3"):
            await self.store.pod_managers.create(name, "https://10.1.0.1", "u", "p", "")
        page = await self.store.pod_managers.list(after_name="rack-1", limit=1)
        self.assertEqual([p["name"] for p in page], ["rack-2"])
        self.assertEqual([p["name"] for p in await self.store.pod_managers.list()],
                         ["rack-1", "rack-2", "rack-3"])


class QuiesceTests(StoreTestCase):
    async def test_the_operations_the_pservs_cancelled_are_journalled_cancelled_alone(self):
        """
        A reconfiguration's ``quiesce`` answers what the pservs cancelled:
        those end ``cancelled`` by whoever changed the node; another open
        operation of the node stays open (it runs with the new settings).
        """
        await self.store.nodes.create("n1", "c1", ipmi("10.0.0.1"))
        stopped = await self.store.ops.request("n1", "off")
        waiting = await self.store.ops.request("n1", "on")

        async def quiesce(node):
            return {stopped["id"]}

        await self.store.nodes.update("n1", power=ipmi("10.0.0.2"), quiesce=quiesce,
                                      by="alice")
        ended = await self.store.ops.get(stopped["id"])
        self.assertEqual((ended["state"], ended["cancelled_by"], ended["error"]),
                         ("cancelled", "alice", "node n1 reconfigured by alice"))
        self.assertEqual((await self.store.ops.get(waiting["id"]))["state"], "pending")
