"""
Bulk power requests (``POST /v1/power``): the selector, the plan and the
blast-radius guard.  Pure decisions, no I/O; the store reads the rows and
journals the plan (:meth:`powerctl.region.store.operations.OperationStore.request_many`).

A request names its nodes (``{"nodes": [...]}``) or a whole cluster
(``{"cluster": ...}``).  Nodes carry no tags in powerctl, so there is no
tag selector.  The plan says, per node, its cluster, current and desired
state, the desired state the action sets and whether the request would
change anything.

The guard: an action that takes power away (``off``, ``soft-off``,
``cycle``) selecting more than ``share`` of the nodes of any cluster is
refused unless the request says ``"confirm": true`` -- one mistyped
selector must not switch off a row of racks.  It counts the nodes
selected, not only those that would change: a cycle changes every node,
and an ``off`` to nodes believed off still reaches their BMCs.
"""

import attrs

from powerctl.power import Action

#: Default share of a cluster a bulk off/soft-off/cycle may select without confirm.
DEFAULT_SHARE = 0.2
#: Most nodes one bulk request may name (the cluster selector has no cap).
MAX_NODES = 10_000
#: Actions the guard applies to: they take power away from running hosts.
GUARDED = frozenset({Action.OFF, Action.SOFT_OFF, Action.CYCLE, Action.FENCE})


@attrs.frozen
class Item:
    """One node of a plan."""

    node: str
    cluster: str
    power_state: str
    desired_state: str
    #: the desired state the action sets (None: query, which sets none)
    target: str
    #: whether the request would change the node (a cycle always does)
    changes: bool

    def as_json(self):
        return attrs.asdict(self)


@attrs.frozen
class Plan:
    action: Action
    items: tuple
    #: cluster -> (nodes selected, nodes in the cluster)
    clusters: dict
    share: float
    #: the clusters where the selection exceeds ``share`` for a guarded action
    over: tuple

    @property
    def needs_confirm(self):
        return bool(self.over)

    def refusal(self):
        """Why the guard refuses the plan without confirm (None: it does not)."""
        if not self.over:
            return None
        cluster = self.over[0]
        selected, total = self.clusters[cluster]
        return (f"{self.action.value} would touch {selected} of the {total} nodes of "
                f"cluster {cluster!r} (more than {self.share:.0%}); repeat with "
                "\"confirm\": true to do it, or \"dry_run\": true to see the plan")

    def as_json(self):
        return {
            "action": self.action.value, "nodes": [i.as_json() for i in self.items],
            "count": len(self.items), "changing": sum(1 for i in self.items if i.changes),
            "clusters": {c: {"selected": s, "total": t} for c, (s, t) in
                         sorted(self.clusters.items())},
            "share": self.share, "needs_confirm": self.needs_confirm}


def _changes(action, row):
    if action is Action.CYCLE:
        return True
    if action.target is None:
        return False
    target = action.target.value
    return row["power_state"] != target or row["desired_state"] != target


def plan(action, rows, totals, share=DEFAULT_SHARE):
    """
    The plan of ``action`` over ``rows`` (node rows: name, cluster,
    power_state, desired_state; by name) given ``totals`` (cluster ->
    nodes in it).
    """
    items = tuple(Item(node=r["name"], cluster=r["cluster"], power_state=r["power_state"],
                       desired_state=r["desired_state"],
                       target=None if action.target is None else action.target.value,
                       changes=_changes(action, r)) for r in rows)
    selected = {}
    for item in items:
        selected[item.cluster] = selected.get(item.cluster, 0) + 1
    clusters = {c: (n, max(n, totals.get(c, n))) for c, n in selected.items()}
    over = ()
    if action in GUARDED:
        over = tuple(sorted(c for c, (n, total) in clusters.items() if n > share * total))
    return Plan(action=action, items=items, clusters=clusters, share=share, over=over)


def check_share(value):
    """A configured share: a number from 0 to 1 (ValueError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError("must be a number from 0 to 1 (a share of a cluster's nodes)")
    return float(value)
