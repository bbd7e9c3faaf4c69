"""
``powerctl ops list|show|cancel|confirm|wait``: the journal of power operations.

``cancel`` is answered once the operation's device is quiet (the region
cancels through the pserv's registry); ``confirm`` tells the region that an
operator carried out a ``manual`` agent's action; ``wait`` follows operations
on the region's event stream until they end (:mod:`powerctl.cli.events`).
"""

from powerctl.cli import EXIT_OK, UsageError
from powerctl.cli import events, output
from powerctl.cli.client import ApiError, add_command, add_group, api_command, requester
from powerctl.power import OpState, PowerState

#: The states ``--state`` accepts, in the journal's own order.
STATES = tuple(s.value for s in OpState)
#: Operations ``ops list`` shows unless told otherwise (the newest).
DEFAULT_SHOWN = 100
#: What an operator may confirm a manual node reached.
CONFIRMABLE = (PowerState.ON.value, PowerState.OFF.value)


def add_commands(subparsers, parent):
    """Register ``ops ...``; ``parent`` carries the API options."""
    ops = add_group(subparsers, "ops", "the journal of power operations")
    p = add_command(ops, "list", ops_list, "list operations", parent)
    p.add_argument("--node", "-n")
    p.add_argument("--state", "-s", choices=STATES)
    p.add_argument("--cluster", "-c", help="only operations of this cluster's nodes")
    p.add_argument("--limit", type=int, metavar="N", help="at most N, newest first, "
                   f"following the API's pages (default {DEFAULT_SHOWN})")
    p.add_argument("--all", action="store_true", help="the whole journal (every page)")
    p.add_argument("--before", type=int, metavar="ID", help="only operations older than ID")
    add_command(ops, "show", ops_show, "one operation", parent).add_argument("id", type=int)
    p = add_command(ops, "cancel", ops_cancel,
                    "cancel open operations (each answered once its device is quiet)", parent)
    p.add_argument("ids", type=int, nargs="+", metavar="ID")
    p.add_argument("--force", action="store_true",
                   help="journal it cancelled even when its pserv cannot be reached")
    p = add_command(ops, "confirm", ops_confirm,
                    "confirm a manual operation: you saw the node reach STATE", parent)
    p.add_argument("id", type=int)
    p.add_argument("--state", required=True, choices=CONFIRMABLE)
    events.add_ops_wait(ops, parent)  # ops wait ID...: the live event stream


def _link(op):
    if op.get("coalesced_into"):
        return f"joined {op['coalesced_into']}"
    if op.get("superseded_by"):
        return f"by {op['superseded_by']}"
    return None


OP_COLUMNS = [
    ("ID", "id"),
    ("NODE", "node"),
    ("ACTION", "action"),
    ("STATE", "state"),
    ("LINK", _link),
    ("REQUESTED", lambda o: output.when(o.get("requested_at"))),
    ("FINISHED", lambda o: output.when(o.get("finished_at"))),
    ("PSERV", "pserv"),
    ("AGENT", "agent"),
    ("ERROR", "error"),
]


@api_command
async def ops_list(ctx, args, api):
    """``powerctl ops list [--node N] [--state S]``."""
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit: must be at least 1")
    ops, more = await api.collect("/v1/power_ops", {
        "node": args.node, "state": args.state, "cluster": args.cluster,
        "before": args.before}, most=None if args.all else (args.limit or DEFAULT_SHOWN),
        keys=("power_ops", "ops"))
    if args.json:
        ctx.out(output.to_json(ops))
    else:
        ctx.out(output.table(ops, OP_COLUMNS))
    if more and not args.json:
        ctx.err(f"older operations: powerctl ops list --before {ops[-1]['id']} "
                "(or --limit N, --all)")
    return EXIT_OK


@api_command
async def ops_show(ctx, args, api):
    """``powerctl ops show ID``."""
    op = await api.call("GET", f"/v1/power_ops/{args.id}")
    if args.json:
        ctx.out(output.to_json(op))
    else:
        op = op or {}
        pairs = [(k, output.shown(k, v)) for k, v in op.items() if k != "detail"]
        ctx.out(output.key_values(pairs + detail_pairs(op.get("detail"))))
    return EXIT_OK


def detail_pairs(detail):
    """
    What the power topology said of an operation, as ``key: value`` lines:
    the acting level and each device's state, a degraded success's
    warning, the levels that failed before, the fence it joined.
    """
    if not isinstance(detail, dict):
        return []
    pairs = []

    def devices(level):
        return " ".join(f"{d.get('agent')}={d.get('state')}"
                        + (f" ({d['error']})" if d.get("error") else "")
                        for d in level.get("devices") or () if isinstance(d, dict))

    if detail.get("level") is not None:
        verified = "" if detail.get("verified", True) else " (not verified by a query)"
        pairs.append(("level", f"{detail['level']}: {devices(detail)}{verified}"))
    if detail.get("warning"):
        pairs.append(("warning", detail["warning"]))
    for failed in detail.get("failed_levels") or ():
        if isinstance(failed, dict):
            pairs.append((f"failed level {failed.get('level')}", failed.get("reason")))
    if detail.get("coalesced_fence") is not None:
        pairs.append(("coalesced fence", f"joined fence {detail['coalesced_fence']} "
                      "(no hardware call)"))
    return pairs


@api_command
async def ops_cancel(ctx, args, api):
    """``powerctl ops cancel ID... [--force]``: each answered once its device is quiet."""
    results, status = [], EXIT_OK
    for op_id in args.ids:
        body = {"requester": requester()}
        if args.force:
            body["force"] = True
        try:
            op = await api.call("POST", f"/v1/power_ops/{op_id}/cancel", body=body)
            results.append({"id": op_id, "state": op.get("state"), "error": None})
        except ApiError as e:
            results.append({"id": op_id, "state": None, "error": str(e)})
            status = e.status
    if args.json:
        ctx.out(output.to_json(results))
    else:
        for r in results:
            ctx.out(f"operation {r['id']}: " + (r["state"] if r["error"] is None
                                                else f"error: {r['error']}"))
    return status


@api_command
async def ops_confirm(ctx, args, api):
    """``powerctl ops confirm ID --state on|off``: a manual action was done."""
    op = await api.call("POST", f"/v1/power_ops/{args.id}/confirm",
                        body={"state": args.state, "requester": requester()})
    if args.json:
        ctx.out(output.to_json(op))
    else:
        ctx.out(f"operation {args.id}: confirmed {args.state}")
    return EXIT_OK
