"""
What runs *now*: the region asks every pserv connected to it what its
registry has in play, what waits, who joined, since when, and the state of
its priority slots -- the live view behind ``GET /v1/activity``, ``powerctl
activity`` and the status page's "Running now" panel.

The journal's ``running`` only means "dispatched"; this view is what the
pservs say at this moment.

Two halves:

* I/O -- :func:`fetch` pages through one pserv's ``ListActions`` and
  ``ListSlots`` (both walks at once); :class:`LiveActivity` asks every
  connected pserv in parallel, each bounded by its own timeout, so that a
  slow or dead pserv never holds up the answer: it is shown with an error
  (and whatever it answered before the deadline).
* Pure shaping -- :func:`shape` turns those raw answers into the document
  the API returns; no I/O, no clock of its own, so it is tested with plain
  data.

Times: the pservs report their registry times on their own clock together
with their ``now``; ages are computed on the pserv's clock, and ``since``
is the region's clock minus that age, so the view needs no synchronised
clocks between hosts.
"""

import datetime

from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from powerctl.rpc import commands

#: Items asked for per ``ListActions``/``ListSlots`` page (the pserv caps it at 200).
PAGE = 200
#: Seconds one pserv gets to answer the whole walk before it is shown as failed.
TIMEOUT = 2.0


class PservTimeout(Exception):
    """A pserv did not finish answering within the deadline."""


# -- I/O ------------------------------------------------------------------------


class _Walk:
    """What one pserv answered so far; ``abandoned`` once its deadline passed."""

    def __init__(self):
        self.nodes = []
        self.slots = None
        self.now = None
        self.abandoned = False


async def _walk_actions(protocol, walk, node, page, most):
    after = ""
    while not walk.abandoned:
        if most is not None and len(walk.nodes) >= most:
            return
        kwargs = {"after_node": after,
                  "limit": page if most is None else min(page, most - len(walk.nodes))}
        if node is not None:
            kwargs["node"] = node
        answer = await protocol.callRemote(commands.ListActions, **kwargs)
        if walk.abandoned:
            return
        walk.nodes.extend(answer["nodes"])
        walk.now = answer.get("now", walk.now)
        if answer["done"] or not answer["nodes"]:
            return
        after = answer["nodes"][-1]["node"]


async def _walk_slots(protocol, walk, node, page, most):
    after_priority, after_seq = 0, -1
    while not walk.abandoned:
        queued = len(walk.slots["queue"]) if walk.slots is not None else 0
        if most is not None and queued >= most:
            return
        kwargs = {"after_priority": after_priority, "after_seq": after_seq,
                  "limit": page if most is None else min(page, most - queued)}
        if node is not None:
            kwargs["node"] = node
        try:
            answer = await protocol.callRemote(commands.ListSlots, **kwargs)
        except amp.UnhandledCommand:  # a pserv older than ListSlots
            return
        if walk.abandoned:
            return
        if walk.slots is None:
            walk.slots = {"size": answer["size"], "busy": answer["busy"],
                          "waiting": answer["waiting"], "holding": answer["holding"],
                          "queue": [], "now": answer["now"]}
        walk.slots["queue"].extend(answer["queue"])
        if answer["done"] or not answer["queue"]:
            return
        last = answer["queue"][-1]
        after_priority, after_seq = last["priority"], last["seq"]


async def fetch(protocol, node=None, page=PAGE, walk=None, most=None):
    """
    One pserv's raw answer: ``{"nodes": [ListActions entries], "now",
    "slots": {"size", "busy", "waiting", "holding", "queue", "now"}}``.
    ``walk`` (a :class:`_Walk`) collects the pages as they arrive; with
    ``most``, the walks stop after that many nodes and slot waiters (the
    first ones, in node and in serve order).
    """
    walk = walk if walk is not None else _Walk()
    await defer.gatherResults([
        defer.ensureDeferred(_walk_actions(protocol, walk, node, page, most)),
        defer.ensureDeferred(_walk_slots(protocol, walk, node, page, most)),
    ], consumeErrors=True).addErrback(lambda f: f.value.subFailure)
    return {"nodes": walk.nodes, "now": walk.now, "slots": walk.slots}


def _bounded(d, timeout, clock):
    """
    A Deferred with ``d``'s result, or failing with :class:`PservTimeout`
    after ``timeout`` seconds.  ``d`` itself is never cancelled: AMP cannot
    take back a question, and an answer to a cancelled one breaks the
    connection.  Its late result is dropped.
    """
    out = defer.Deferred()

    def expire():
        if not out.called:
            out.errback(PservTimeout(f"no complete answer within {timeout:g} s"))

    call = clock.callLater(timeout, expire)

    def settle(result):
        if call.active():
            call.cancel()
        if not out.called:
            if isinstance(result, Failure):
                out.errback(result)
            else:
                out.callback(result)
        return None  # a late failure is not an unhandled error

    d.addBoth(settle)
    return out


def _error_text(failure):
    if failure.check(PservTimeout):
        return f"timeout: {failure.getErrorMessage()}"
    if failure.check(commands.NotAuthenticated):
        return "not authenticated"
    return f"{failure.type.__name__}: {failure.getErrorMessage()}".rstrip(": ")


class LiveActivity:
    """
    ``live(node=None, cluster=None, most=None)`` asks every pserv
    ``pservs()`` returns (protocols with ``.pserv``, ``.cluster`` and
    ``callRemote``), all at once, and fires with the :func:`shape`\\ d
    document.  With ``cluster`` only that cluster's pservs are asked; with
    ``node`` only about that node; with ``most``, for at most that many
    nodes and slot waiters each (the status page shows no more).

    :param pservs: callable returning the connected pserv protocols, e.g.
        ``lambda: region.directory.all()``.
    :param clock: an ``IReactorTime``: deadlines and the region's time.
    :param timeout: seconds each pserv gets for its whole walk.
    """

    log = Logger()

    def __init__(self, pservs, clock, timeout=TIMEOUT, page=PAGE):
        self.pservs = pservs
        self.clock = clock
        self.timeout = timeout
        self.page = page

    def __call__(self, node=None, cluster=None, most=None):
        return defer.ensureDeferred(self.collect(node=node, cluster=cluster, most=most))

    async def collect(self, node=None, cluster=None, most=None):
        """The shaped view; ``most`` bounds the nodes and slot waiters asked of each pserv."""
        protocols = [p for p in self.pservs()
                     if getattr(p, "pserv", None) is not None
                     and (cluster is None or p.cluster == cluster)]
        walks = [_Walk() for _ in protocols]
        answers = await defer.DeferredList([
            _bounded(defer.ensureDeferred(fetch(p, node, self.page, w, most)), self.timeout,
                     self.clock)
            for p, w in zip(protocols, walks)], consumeErrors=True)
        raw = []
        for protocol, walk, (ok, result) in zip(protocols, walks, answers):
            entry = {"pserv": protocol.pserv, "cluster": protocol.cluster,
                     "nodes": walk.nodes, "now": walk.now, "slots": walk.slots,
                     "error": None, "complete": ok}
            if not ok:
                walk.abandoned = True
                entry["error"] = _error_text(result)
                self.log.warn("pserv {pserv} did not say what it runs: {why}",
                              pserv=protocol.pserv, why=entry["error"])
            raw.append(entry)
        return shape(raw, self.clock.seconds(), node=node, timeout=self.timeout)


# -- pure shaping -------------------------------------------------------------------


def iso(seconds):
    """Epoch seconds as an ISO-8601 UTC timestamp, to the millisecond (None stays None)."""
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(
        timespec="milliseconds")


def _op_id(value):
    """Operation ids as the journal has them (integers) when they are."""
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value


class _Shaper:
    """Shapes one answer; ``since`` times are cached (bulk requests start together)."""

    def __init__(self, region_now, node):
        self.region_now = region_now
        self.node = node
        self._iso = {}

    def when(self, pserv_now, then):
        """(since, age): ``then`` on the pserv's clock, ``since`` on the region's."""
        if pserv_now is None or then is None:
            return None, None
        age = pserv_now - then
        if age < 0:
            age = 0.0
        key = int((self.region_now - age) * 1000)
        since = self._iso.get(key)
        if since is None:
            since = self._iso[key] = iso(key / 1000)
        return since, round(age, 3)

    def action(self, info, pserv_now, slot_of):
        """A ListActions action, shaped in place (no copy: 10,000s of them)."""
        if info is None:
            return None
        info["since"], info["age"] = self.when(pserv_now, info.pop("started_at", None))
        info["queued_since"], info["queued_age"] = self.when(
            pserv_now, info.pop("queued_at", None))
        op = info["operation_id"] = _op_id(info.get("operation_id"))
        joined = info["joined"] = [_op_id(j) for j in info.get("joined") or ()]
        if "joined_total" not in info:
            info["joined_total"] = len(joined)
        info["stopping"] = bool(info.get("stopping"))
        if slot_of is not None:
            info.update(slot_of.get(op, _NO_SLOT))
        return info

    def slot_entry(self, item, pserv_now, position=None):
        since, age = self.when(pserv_now, item.get("since"))
        shown = {"node": item.get("node"), "operation_id": _op_id(item.get("operation_id")),
                 "action": item.get("action"), "priority": item.get("priority"),
                 "since": since, "age": age}
        if position is not None:
            shown["position"] = position
        return shown

    def slots(self, raw):
        if raw is None:
            return None
        now, node = raw.get("now"), self.node
        queue = [self.slot_entry(w, now, w.get("position") or i + 1)
                 for i, w in enumerate(raw.get("queue") or ())
                 if node is None or w.get("node") == node]
        holding = [self.slot_entry(h, now) for h in raw.get("holding") or ()
                   if node is None or h.get("node") == node]
        size, busy = raw.get("size", 0), raw.get("busy", 0)
        return {"size": size, "busy": busy, "free": max(0, size - busy),
                "waiting": raw.get("waiting", len(queue)), "holding": holding, "queue": queue}

    def pserv(self, raw):
        slots = self.slots(raw.get("slots"))
        slot_of = None  # operation id -> {"slot", ...}, on a pserv with slots
        if slots is not None and slots["size"]:
            slot_of = {h["operation_id"]: _HELD for h in slots["holding"]}
            for w in slots["queue"]:
                slot_of[w["operation_id"]] = {"slot": "waiting", "slot_position": w["position"]}
        now, node = raw.get("now"), self.node
        nodes = [item for item in raw.get("nodes") or ()
                 if node is None or item.get("node") == node]
        for item in nodes:
            for key in ("running", "waiting", "query"):
                item[key] = self.action(item.get(key), now, slot_of)
        nodes.sort(key=lambda n: n["node"] or "")
        return {"pserv": raw.get("pserv"), "cluster": raw.get("cluster"),
                "error": raw.get("error"), "complete": bool(raw.get("complete", True)),
                "nodes": nodes, "slots": slots}


_NO_SLOT = {"slot": None}
_HELD = {"slot": "held"}


def shape(raw_pservs, region_now, node=None, timeout=None):
    """
    The document of ``GET /v1/activity`` from the pservs' raw answers
    (``[{"pserv", "cluster", "error", "complete", "nodes", "now",
    "slots"}]``, see :func:`fetch`), which it reuses: their node entries
    are shaped in place, for speed::

        {"generated_at", "node", "timeout",
         "pservs": [{"pserv", "cluster", "error", "complete",
                     "nodes": [{"node", "running", "waiting", "query"}],
                     "slots": {"size", "busy", "free", "waiting",
                               "holding": [...], "queue": [...]} or null}],
         "totals": {"pservs", "errors", "nodes", "running", "waiting",
                    "queries", "joined", "slot_waiting"}}

    where ``running``/``waiting``/``query`` are null or ``{"operation_id",
    "action", "joined", "joined_total", "since", "age", "stopping"}`` plus,
    on a pserv with slots, ``slot`` (``held``, ``waiting`` with
    ``slot_position``, or null); a queue entry is ``{"node",
    "operation_id", "action", "priority", "since", "age", "position"}``.
    ``since`` is ISO-8601 UTC, ``age`` seconds; both null for an action
    that waits in the registry (it has not started).
    """
    shaper = _Shaper(region_now, node)
    pservs = sorted((shaper.pserv(r) for r in raw_pservs),
                    key=lambda p: (p["cluster"] or "", p["pserv"] or ""))
    totals = {"pservs": len(pservs), "errors": sum(1 for p in pservs if p["error"]),
              "nodes": 0, "running": 0, "waiting": 0, "queries": 0, "joined": 0,
              "slot_waiting": 0}
    for p in pservs:
        totals["nodes"] += len(p["nodes"])
        for n in p["nodes"]:
            totals["running"] += n["running"] is not None
            totals["waiting"] += n["waiting"] is not None
            totals["queries"] += n["query"] is not None
            totals["joined"] += sum(a["joined_total"] for a in
                                    (n["running"], n["waiting"], n["query"]) if a)
        if p["slots"] is not None:
            totals["slot_waiting"] += len(p["slots"]["queue"])
    return {"generated_at": iso(region_now), "node": node, "timeout": timeout,
            "pservs": pservs, "totals": totals}
