"""
``powerctl activity``: what the pservs run right now, as people read it.

The command asks ``GET /v1/activity`` (``--node NAME`` for one node) and
exits 1 when a pserv did not answer.  The rest are pure functions over that
document (see :func:`powerctl.region.activity.shape`), so the format is
tested without a reactor.  One table of busy nodes (per pserv and node: what runs, since when,
its slot, who joined, what waits), then per pserv the state of its priority
slots and the queue of actions waiting for one, and a line per pserv that
did not answer in time.
"""

from powerctl.cli import EXIT_FAILURE, EXIT_OK
from powerctl.cli import output
from powerctl.cli.client import api_command

#: Slot waiters listed per pserv (the queue can be as long as the fleet).
QUEUE_SHOWN = 20


def _action(a):
    """``12 on`` (``12 on (stopping)``) or None."""
    if not a:
        return None
    text = f"{a.get('operation_id')} {a.get('action')}"
    return text + " (stopping)" if a.get("stopping") else text


def age(seconds):
    """``4.2s``, ``3m05s``, ``2h07m`` -- or None."""
    if seconds is None:
        return None
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _slot(a):
    if not a or "slot" not in a:
        return None
    if a["slot"] == "waiting":
        return f"waiting #{a.get('slot_position')}"
    return a["slot"] or "-"


def _joined(row):
    ids = [j for a in (row["running"], row["waiting"], row["query"]) if a
           for j in a.get("joined") or ()]
    total = sum(a.get("joined_total", len(a.get("joined") or ()))
                for a in (row["running"], row["waiting"], row["query"]) if a)
    if not ids:
        return None
    text = ",".join(str(j) for j in ids)
    return text + f" (+{total - len(ids)})" if total > len(ids) else text


def _lead(row):
    """The action whose start and slot a row shows: the change, else the query."""
    return row["running"] or row["query"] or {}


COLUMNS = [
    ("PSERV", "pserv"),
    ("NODE", "node"),
    ("RUNNING", lambda r: _action(r["running"])),
    ("SINCE", lambda r: output.when(_lead(r).get("since"))),
    ("AGE", lambda r: age(_lead(r).get("age"))),
    ("SLOT", lambda r: _slot(_lead(r))),
    ("JOINED", _joined),
    ("WAITING", lambda r: _action(r["waiting"])),
    ("WAITED", lambda r: age((r["waiting"] or {}).get("queued_age"))),
    ("QUERY", lambda r: _action(r["query"])),
]

QUEUE_COLUMNS = [
    ("#", "position"),
    ("NODE", "node"),
    ("OP", "operation_id"),
    ("ACTION", "action"),
    ("PRIORITY", "priority"),
    ("WAITING SINCE", lambda w: output.when(w.get("since"))),
    ("AGE", lambda w: age(w.get("age"))),
]


def rows(doc):
    """One row per busy node: ``{"pserv", "cluster", "node", "running", ...}``."""
    result = []
    for p in doc.get("pservs") or ():
        for n in p.get("nodes") or ():
            result.append({"pserv": p.get("pserv"), "cluster": p.get("cluster"),
                           "node": n.get("node"), "running": n.get("running"),
                           "waiting": n.get("waiting"), "query": n.get("query")})
    return result


def render(doc, queue_shown=QUEUE_SHOWN):
    """The human view of ``GET /v1/activity``."""
    lines = []
    busy = rows(doc)
    if busy:
        lines.append(output.table(busy, COLUMNS))
    else:
        where = f"node {doc['node']}" if doc.get("node") else "any connected pserv"
        lines.append(f"nothing runs or waits on {where}")
    pservs = doc.get("pservs") or ()
    if not pservs:
        lines.append("no pserv is connected to this region")
    for p in pservs:
        name = f"{p.get('pserv')} ({p.get('cluster')})"
        if p.get("error"):
            partial = " -- partial answer above" if p.get("nodes") else ""
            lines.append(f"{name}: no complete answer: {p['error']}{partial}")
        slots = p.get("slots")
        if not slots or not slots.get("size"):
            continue
        lines.append("")
        lines.append(f"{name}: slots {slots.get('busy')}/{slots.get('size')} busy, "
                     f"{slots.get('waiting')} waiting for a slot")
        queue = slots.get("queue") or []
        if queue:
            lines.append(output.table(queue[:queue_shown], QUEUE_COLUMNS))
            if len(queue) > queue_shown:
                lines.append(f"... and {len(queue) - queue_shown} more (--json lists them all)")
    totals = doc.get("totals") or {}
    if busy or totals.get("errors"):
        lines.append("")
        lines.append(f"{totals.get('running', 0)} running, {totals.get('waiting', 0)} "
                     f"waiting, {totals.get('joined', 0)} joined, "
                     f"{totals.get('slot_waiting', 0)} waiting for a slot on "
                     f"{totals.get('pservs', 0)} pserv(s)"
                     + (f"; {totals['errors']} did not answer" if totals.get("errors") else ""))
    return "\n".join(lines)


def add_commands(subparsers, parent):
    """Register ``activity``; ``parent`` carries the API options."""
    p = subparsers.add_parser("activity", parents=[parent],
                              help="what the pservs run right now, what waits, who joined, "
                                   "since when, and their slot queues (exit 1 if a pserv "
                                   "did not answer)")
    p.add_argument("--node", "-n", metavar="NAME", help="only this node")
    p.set_defaults(func=activity)


@api_command
async def activity(ctx, args, api):
    """``powerctl activity [--node NAME]``: the pservs' live view (``GET /v1/activity``)."""
    doc = await api.call("GET", "/v1/activity", query={"node": args.node})
    ctx.out(output.to_json(doc) if args.json else render(doc))
    failed = [p.get("pserv") for p in (doc or {}).get("pservs") or () if p.get("error")]
    if failed:
        ctx.err(f"error: no complete answer from pserv(s) {', '.join(map(str, failed))}")
        return EXIT_FAILURE
    return EXIT_OK
