"""
An in-memory journal and lease table for the region's coordination.

:class:`FakeRegionStore` and :class:`FakeLeases` have the methods (names,
arguments, answers) that :class:`powerctl.region.core.Region`, its AMP
responder (:class:`powerctl.region.rpc.RegionProtocol`) and the REST API
(:class:`powerctl.region.api.Api`) call on the real store and lease table,
so the region's decisions -- where an operation goes, what a report
records, what a recovering pserv is handed -- can be tested without
PostgreSQL.

They keep only what those decisions read.  What PostgreSQL itself
guarantees is *not* reproduced: no transactions or row locks, no
NOTIFY between regions, no drift decisions, no responsiveness grace, no
validation of power documents, and ownership is plain (every unowned node
goes to the lowest live epoch of its cluster, not rendezvous hashing).
Tests of those belong with the real store.
"""

import bisect
import itertools
import types

import attrs

from powerctl.power import OPEN_STATES, TERMINAL_STATES, Action
from powerctl.region.errors import InvalidInput, NotFound, StaleEpoch
from powerctl.region.leases import LeaseExpired


@attrs.frozen
class Recorded:
    """What a report did, as the real store answers it: the op now, and whether it changed."""

    op: dict
    changed: bool


class FakeLockouts:
    """
    The region's BMC lock-outs (``store.lockouts``, issue 10) in a dict:
    ``(node, agent) -> row``.  Enough for code that sends them with a
    node's configuration and for operator clearing.
    """

    def __init__(self, cluster_of=lambda node: None):
        self.rows = {}
        self._ids = itertools.count(1)
        self._cluster_of = cluster_of

    async def record(self, node, agent, failures, reason, pserv):
        row = self.rows.get((node, agent))
        if row is None:
            row = self.rows[(node, agent)] = {"id": next(self._ids), "node": node,
                                              "agent": agent}
        row.update(failures=failures, reason=reason, pserv=pserv,
                   cluster=self._cluster_of(node))
        return row["id"]

    async def of_nodes(self, names):
        out = {}
        for (node, agent), row in sorted(self.rows.items()):
            if node in names:
                out.setdefault(node, []).append({"agent": agent, "id": row["id"]})
        return out

    async def list(self, cluster=None, clusters=None):
        return [dict(r) for _, r in sorted(self.rows.items())
                if (cluster is None or r["cluster"] == cluster)
                and (clusters is None or r["cluster"] in clusters)]

    async def clear(self, node):
        cleared = [self.rows.pop(k) for k in sorted(self.rows) if k[0] == node]
        return {"cluster": self._cluster_of(node), "cleared": cleared}


class FakeRegionStore:
    """
    Nodes, the operation journal and pservs, in dicts.  Add nodes with
    :meth:`add_node`; every call the region makes is listed in
    :attr:`calls` as ``(method, args...)`` for tests that check *that* a
    write happened rather than only its effect.
    """

    def __init__(self):
        self.node_rows = {}  # name -> row dict
        self.op_rows = {}  # id -> row dict
        self.pserv_rows = {}  # name -> row dict
        self.calls = []
        self._names = None  # node names in order, see _sorted_names
        self.circuit_budgets = {}  # (cluster, circuit) -> (max_on, spacing)
        self._ids = itertools.count(1)
        # The parts of the real Store (powerctl.region.store), by kind; each
        # method may be replaced by a test (``store.nodes.get = broken``).
        self.nodes = types.SimpleNamespace(
            get=self.get_node, list=self.list_nodes, page=self.page_nodes, power_config=self.node_power_config,
            circuit_config=self.node_circuit_config,
            record_power_state=self.record_power_state, record_outcome=self.record_end,
            record_outcomes=self.record_ends,
            record_polls=self.record_polls, desired_states=self.desired_states,
            releasing=self.releasing,
            changes_cursor=self.changes_cursor, changed_since=self.changed_since)
        self.ops = types.SimpleNamespace(
            request=self.request_power, request_serving=self.request_serving,
            get=self.get_op, list=self.list_ops,
            open_of_node=self.node_open_ops, mark_running=self.mark_running,
            mark_running_many=self.mark_running_many, record_outcome=self.record_outcome,
            outstanding=self.outstanding_ops, dispatch_view=self.dispatch_view,
            pending=self.pending_ops)
        self.clusters = types.SimpleNamespace(
            register_pserv=self.register_pserv, heartbeat=self.heartbeat,
            pserv_disconnected=self.pserv_disconnected, serving=self.serving,
            heartbeat_timeout=90.0)
        self.lockouts = FakeLockouts(
            lambda node: self.node_rows.get(node, {}).get("cluster"))

    # -- set-up helpers (not part of the real store) ------------------------

    def add_node(self, name, cluster, power, desired_state=None, owner_epoch=None,
                 circuit=None):
        """A node as if created through the API; ``power`` is used as given."""
        self._names = None
        self.node_rows[name] = {
            "name": name, "cluster": cluster, "power": power,
            "desired_state": desired_state, "power_state": "unknown", "responsive": True,
            "last_error": None, "owner_epoch": owner_epoch, "handoff_epoch": None,
            "circuit": circuit}
        return self.node_rows[name]

    def add_op(self, node, action, state="pending", pserv=None):
        """A journalled operation, without the desired-state side effect."""
        op = {"id": next(self._ids), "node": node, "action": Action.parse(action).value,
              "state": state, "coalesced_into": None, "superseded_by": None,
              "error": None, "pserv": pserv, "agent": None, "requester": "test",
              "observed_state": None, "epoch": None, "cancelled_by": None,
              "confirmed_by": None}
        self.op_rows[op["id"]] = op
        return dict(op)

    # -- nodes ----------------------------------------------------------------

    def _node(self, name):
        try:
            return self.node_rows[name]
        except KeyError:
            raise NotFound(f"node {name!r} does not exist") from None

    async def get_node(self, name):
        return dict(self._node(name))

    async def list_nodes(self, cluster=None, after_name="", limit=None, clusters=None,
                         power_state=None, desired_state=None, responsive=None):
        rows = [dict(n) for _, n in sorted(self.node_rows.items())
                if (cluster is None or n["cluster"] == cluster) and n["name"] > after_name
                and (clusters is None or n["cluster"] in clusters)
                and (power_state is None or n["power_state"] == power_state)
                and (desired_state is None or n["desired_state"] == desired_state)
                and (responsive is None or n["responsive"] == responsive)]
        return rows if limit is None else rows[:limit]

    async def page_nodes(self, secrets, after_name="", limit=100, **filters):
        """As the real store's ``page``, by its Python reference."""
        from powerctl.region.store import node_page

        rows = await self.list_nodes(after_name=after_name, limit=limit + 1, **filters)
        return node_page.reference(rows, secrets, limit)

    async def node_power_config(self, name):
        return self._node(name)["power"]

    async def node_circuit_config(self, name):
        node = self._node(name)
        if not node.get("circuit"):
            return None
        max_on, spacing = self.circuit_budgets.get((node["cluster"], node["circuit"]),
                                                   (None, 0.0))
        return {"name": node["circuit"], "max_on": max_on, "spacing": spacing}

    async def node_open_ops(self, name):
        return [dict(o) for _, o in sorted(self.op_rows.items())
                if o["node"] == name and o["state"] in OPEN_STATES]

    async def record_power_state(self, node, power_state, error=None, queried=True,
                                 poll=False):
        self.calls.append(("record_power_state", node, power_state, error))
        row = self._node(node)
        row["power_state"], row["last_error"] = power_state, error
        return dict(row, reconcile=None)

    async def record_polls(self, reports):
        """As the real store: ``(recorded, missing, refused)``; no state checks."""
        self.calls.append(("record_polls", tuple(reports)))
        recorded, missing = {}, []
        for node, power_state, error in reports:
            row = self.node_rows.get(node)
            if row is None:
                missing.append(node)
                continue
            row["power_state"], row["last_error"] = power_state, error
            recorded[node] = dict(row, reconcile=None)
        return recorded, missing, {}

    # -- the journal ------------------------------------------------------------

    def _op(self, op_id):
        try:
            return self.op_rows[int(op_id)]
        except (KeyError, ValueError, TypeError):
            raise NotFound(f"power operation {op_id!r} does not exist") from None

    async def request_power(self, node, action, requester=""):
        try:
            action = Action.parse(action)
        except ValueError as e:
            raise InvalidInput(f"action: {e}") from None
        row = self._node(node)
        if action.target is not None:
            row["desired_state"] = action.target.value
        op = self.add_op(node, action)
        self.op_rows[op["id"]]["requester"] = requester
        return dict(self.op_rows[op["id"]])

    async def request_serving(self, node, action, requester="", live_within=90.0):
        """As the real store: ``(op, serving)``, ``serving`` as :meth:`serving`."""
        op = await self.request_power(node, action, requester)
        return op, await self.serving(node)

    async def get_op(self, op_id):
        return dict(self._op(op_id))

    async def list_ops(self, node=None, state=None, limit=100, before_id=None, cluster=None,
                       clusters=None):
        def cluster_of(op):
            return (self.node_rows.get(op["node"]) or {}).get("cluster")

        rows = [o for _, o in sorted(self.op_rows.items(), reverse=True)
                if (node is None or o["node"] == node) and (state is None or o["state"] == state)
                and (before_id is None or o["id"] < int(before_id))
                and (cluster is None or cluster_of(o) == cluster)
                and (clusters is None or cluster_of(o) in clusters)]
        return [dict(o) for o in rows[:limit or 100]]

    async def mark_running(self, op_id, pserv, started_at=None, epoch=None):
        self.calls.append(("mark_running", int(op_id), pserv, epoch))
        op = self._op(op_id)
        if op["state"] in TERMINAL_STATES or (op["state"] == "running" and op["pserv"] == pserv):
            return Recorded(dict(op), False)
        op.update(state="running", pserv=pserv, epoch=epoch)
        return Recorded(dict(op), True)

    async def mark_running_many(self, op_ids, pserv, epoch):
        self.calls.append(("mark_running_many", list(op_ids), pserv, epoch))
        for op_id in op_ids:
            op = self.op_rows.get(int(op_id))  # a deleted one is skipped, as the real one does
            if op is not None and op["state"] in OPEN_STATES:
                op.update(state="running", pserv=pserv, epoch=epoch)

    async def record_outcome(self, op_id, state, observed_state=None, agent=None, error=None,
                             coalesced_into=None, superseded_by=None, pserv=None,
                             cancelled_by=None, epoch=None, detail=None):
        self.calls.append(("record_outcome", int(op_id), state, epoch))
        if state not in TERMINAL_STATES:
            raise InvalidInput(f"state: {state!r} is not terminal")
        op = self._op(op_id)
        if op["state"] in TERMINAL_STATES:
            return Recorded(dict(op), False)
        node = self.node_rows.get(op["node"])
        if epoch is not None and node is not None and node["owner_epoch"] != epoch:
            raise StaleEpoch(f"epoch {epoch} does not own node {op['node']}")
        op.update(state=state, observed_state=observed_state, agent=agent, error=error,
                  coalesced_into=coalesced_into, superseded_by=superseded_by,
                  pserv=pserv or op["pserv"], cancelled_by=cancelled_by or op["cancelled_by"],
                  detail=detail)
        return Recorded(dict(op), True)

    async def record_end(self, op_id, state, observed_state=None, error=None, **kwargs):
        """As the real ``nodes.record_outcome``: the outcome and the node state it implies."""
        recorded = await self.record_outcome(op_id, state, observed_state=observed_state,
                                             error=error, **kwargs)
        node = self.node_rows.get(recorded.op["node"])
        if recorded.changed and node is not None:
            if observed_state is not None:
                node["power_state"], node["last_error"] = observed_state, None
            elif state == "failed":
                node["last_error"] = error or "failed"
        return recorded

    async def record_ends(self, reports):
        """As the real ``nodes.record_outcomes``: one result (or refusal) per report."""
        self.calls.append(("record_outcomes", [r.get("op_id") for r in reports]))
        results = []
        for report in reports:
            kwargs = {k: v for k, v in report.items() if k not in ("op_id", "state")}
            try:
                results.append(await self.record_end(report["op_id"], report["state"],
                                                     **kwargs))
            except (InvalidInput, NotFound, StaleEpoch) as e:
                results.append(e)
        return results

    async def pending_ops(self, ids):
        """As the real ``ops.pending``: those of ``ids`` still pending, oldest first."""
        self.calls.append(("pending", list(ids)))
        return [dict(self.op_rows[i]) for i in sorted(set(ids))
                if i in self.op_rows and self.op_rows[i]["state"] == "pending"]

    async def dispatch_view(self, names):
        """As the real ``ops.dispatch_view``: what dispatching to ``names`` needs."""
        self.calls.append(("dispatch_view", sorted(set(names))))
        locked = await self.lockouts.of_nodes(names)
        view = {}
        for name in names:
            row = self.node_rows.get(name)
            if row is not None:
                view[name] = {"cluster": row["cluster"], "owner_epoch": row["owner_epoch"],
                              "handoff_epoch": row["handoff_epoch"], "power": row["power"],
                              "power_error": None,
                              "circuit": await self.node_circuit_config(name),
                              "lockouts": locked.get(name, [])}
        return view

    # -- what a recovering pserv is handed ---------------------------------------

    def _owned_by(self, name, epoch):
        node = self.node_rows[name]
        return epoch is None or (node["owner_epoch"] == epoch and node["handoff_epoch"] is None)

    async def outstanding_ops(self, cluster, after_id=0, limit=500, epoch=None):
        rows = [o for i, o in sorted(self.op_rows.items())
                if i > int(after_id or 0) and o["state"] in OPEN_STATES
                and o["node"] in self.node_rows and self.node_rows[o["node"]]["cluster"] == cluster
                and self._owned_by(o["node"], epoch)]
        return [dict(o, power=self.node_rows[o["node"]]["power"], power_error=None)
                for o in rows[:limit]]

    async def releasing(self, cluster, epoch, limit):
        return sorted(n for n, row in self.node_rows.items()
                      if row["cluster"] == cluster and row["owner_epoch"] == epoch
                      and row["handoff_epoch"] is not None
                      and not row.get("handoff_released"))[:limit]

    async def desired_states(self, cluster, after_name="", limit=500, epoch=None):
        # Pages through the nodes in name order without sorting them every
        # page (a fleet of 100,000 nodes pages through here: scalemodel).
        names = self._sorted_names()
        rows = []
        for name in names[bisect.bisect_right(names, after_name or ""):]:
            n = self.node_rows.get(name)
            if n is None or n["cluster"] != cluster or not self._owned_by(name, epoch):
                continue
            rows.append({"node": n["name"], "desired_state": n["desired_state"],
                         "power_state": n["power_state"], "power": n["power"],
                         "power_error": None})
            if len(rows) == limit:
                break
        return rows

    async def changes_cursor(self):
        """
        None: this store keeps no change cursor, so the region hands out
        none and pservs refresh in full (as with a region predating
        incremental refreshes).
        """
        return None

    async def changed_since(self, cluster, since, after_name="", limit=500, epoch=None):
        """Every node of the cluster, as changed (a superset is correct), with ``ours``."""
        names = self._sorted_names()
        rows = []
        for name in names[bisect.bisect_right(names, after_name or ""):]:
            n = self.node_rows.get(name)
            if n is None or n["cluster"] != cluster:
                continue
            ours = self._owned_by(name, epoch)
            rows.append({"node": n["name"], "desired_state": n["desired_state"],
                         "power_state": n["power_state"], "power": n["power"] if ours else None,
                         "power_error": None, "ours": ours})
            if len(rows) == limit:
                break
        return rows

    def _sorted_names(self):
        """The node names in order, kept until a node is added (deleted ones are skipped)."""
        if self._names is None:
            self._names = sorted(self.node_rows)
        return self._names

    # -- pservs --------------------------------------------------------------------

    async def register_pserv(self, name, cluster, version, region):
        self.pserv_rows[name] = {"name": name, "cluster": cluster, "version": version,
                             "region": region, "connected": True, "actions_in_flight": 0}
        return dict(self.pserv_rows[name])

    async def heartbeat(self, name, actions_in_flight):
        try:
            self.pserv_rows[name].update(actions_in_flight=actions_in_flight, connected=True)
        except KeyError:
            raise NotFound(f"pserv {name!r} is not registered") from None
        return dict(self.pserv_rows[name])

    async def serving(self, node):
        """As the real store: ``(cluster, [connected pserv names])``, None if no such node."""
        row = self.node_rows.get(node)
        if row is None:
            return None
        return row["cluster"], sorted(p["name"] for p in self.pserv_rows.values()
                                      if p["cluster"] == row["cluster"] and p["connected"])

    async def pserv_disconnected(self, name, region=None):
        row = self.pserv_rows.get(name)
        if row is None or not row["connected"] or region not in (None, row["region"]):
            return False
        row.update(connected=False, actions_in_flight=0)
        return True


class FakeLeases:
    """
    The lease table over a :class:`FakeRegionStore`'s nodes.  A lease is
    live until :meth:`expire` or :meth:`release`; :meth:`assign` gives
    every unowned node of a cluster to its lowest live epoch.  Calls to
    :meth:`notify` (the NOTIFY other regions would hear) are recorded in
    :attr:`notified`.
    """

    def __init__(self, store, lease=30.0):
        self.store = store
        self.lease = lease
        self.leases = {}  # epoch -> {"pserv", "cluster", "instance", "live"}
        self.notified = []
        self._epochs = itertools.count(1)

    def expire(self, epoch):
        """End a lease as if it had not been renewed in time (a test's hand)."""
        self.leases[epoch]["live"] = False

    async def grant(self, pserv, cluster, instance):
        for epoch, lease in self.leases.items():
            if lease["live"] and (lease["pserv"], lease["instance"]) == (pserv, instance):
                return {"epoch": epoch, "remaining": self.lease}
        epoch = next(self._epochs)
        self.leases[epoch] = {"pserv": pserv, "cluster": cluster, "instance": instance,
                              "live": True}
        return {"epoch": epoch, "remaining": self.lease}

    async def renew(self, epoch):
        lease = self.leases.get(epoch)
        if lease is None or not lease["live"]:
            raise LeaseExpired(f"the lease of epoch {epoch} is over")
        return self.lease

    async def release(self, epoch):
        self.leases[epoch]["live"] = False
        clusters = set()
        for node in self.store.node_rows.values():
            if node["owner_epoch"] == epoch:
                node["owner_epoch"] = None
                clusters.add(node["cluster"])
        return sorted(clusters)

    async def owner(self, node):
        row = self.store.node_rows.get(node)
        if row is None:
            return None
        return {"owner_epoch": row["owner_epoch"], "handoff_epoch": row["handoff_epoch"],
                "cluster": row["cluster"]}

    async def release_nodes(self, epoch, nodes):
        released = []
        for name in nodes:
            row = self.store.node_rows.get(name)
            if row is not None and row["handoff_epoch"] == epoch:
                row["handoff_epoch"] = None
                released.append(name)
        return sorted(released)

    async def notify(self, cluster):
        self.notified.append(cluster)

    async def owned(self, epoch, nodes):
        return {n for n in nodes if n in self.store.node_rows
                and self.store.node_rows[n]["owner_epoch"] == epoch
                and self.store.node_rows[n]["handoff_epoch"] is None}

    async def clusters(self):
        return sorted({n["cluster"] for n in self.store.node_rows.values()}
                      | {lease["cluster"] for lease in self.leases.values()})

    async def assign(self, cluster):
        live = sorted(e for e, lease in self.leases.items()
                      if lease["live"] and lease["cluster"] == cluster)
        assigned = {}
        for name, node in sorted(self.store.node_rows.items()):
            if node["cluster"] != cluster:
                continue
            if node["owner_epoch"] is not None and node["owner_epoch"] not in live:
                node["owner_epoch"] = None  # its owner's lease is over
            if node["owner_epoch"] is None and live:
                node["owner_epoch"] = live[0]
                assigned.setdefault(live[0], []).append(name)
        return {"assigned": assigned, "handoffs": {}}
