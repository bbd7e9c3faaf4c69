"""
``powerctl power ACTION --cluster C | --nodes A,B [--dry-run] [--confirm] [--wait]``:
one bulk request (``POST /v1/power``) instead of one request per node.

The region journals one operation per node in one transaction.  An off,
soft-off or cycle over more than the region's share of a cluster (20 % by
default) is refused unless ``--confirm``; ``--dry-run`` prints what would
happen and changes nothing.  ``--wait`` then follows every operation on
the event stream, as ``powerctl power NODE... --wait`` does.
"""

import attrs

from powerctl.cli import EXIT_FAILURE, EXIT_OK, EXIT_TIMEOUT, combine
from powerctl.cli import UsageError, output
from powerctl.cli.client import ApiError, requester


def add_options(p):
    """The bulk options of ``powerctl power``."""
    group = p.add_argument_group("bulk (one request for many nodes: POST /v1/power)")
    group.add_argument("--cluster", "-c", dest="bulk_cluster", metavar="CLUSTER",
                       help="every node of this cluster")
    group.add_argument("--nodes", dest="bulk_nodes", metavar="A,B,...",
                       help="these nodes, comma-separated")
    group.add_argument("--dry-run", action="store_true",
                       help="show what would happen (nodes, current and desired state, "
                            "which would change); change nothing")
    group.add_argument("--confirm", action="store_true",
                       help="go past the blast-radius guard (an off, soft-off or cycle of "
                            "more than the region's share of a cluster)")


def wanted(args):
    """Whether the command line asks for a bulk request."""
    return bool(args.bulk_cluster or args.bulk_nodes or args.dry_run or args.confirm)


def _body(args):
    if args.nodes:
        raise UsageError("give nodes as arguments or with --nodes/--cluster, not both")
    if bool(args.bulk_cluster) == bool(args.bulk_nodes):
        raise UsageError("a bulk request needs exactly one of --cluster and --nodes")
    body = {"action": args.action.value, "requester": requester()}
    if args.bulk_cluster:
        body["cluster"] = args.bulk_cluster
    else:
        names = [n.strip() for n in args.bulk_nodes.split(",") if n.strip()]
        if not names:
            raise UsageError("--nodes: give at least one node name")
        body["nodes"] = list(dict.fromkeys(names))
    if args.dry_run:
        body["dry_run"] = True
    if args.confirm:
        body["confirm"] = True
    return body


async def _follow_all(ctx, api, args, ops, deadline):
    """
    Every operation of the request, followed on the region's event stream
    (:func:`powerctl.cli.events.wait_ops`: no cap on how many); one
    :class:`powerctl.cli.power.Outcome` each, in the request's order.
    """
    from powerctl.cli.events import wait_ops
    from powerctl.cli.power import Outcome, _op_error

    decided = await wait_ops(ctx, api, ops, deadline, poll_interval=args.poll_interval)
    results = []
    for op in ops:
        outcome = Outcome(op["node"], requested=op["id"], op=op)
        done = decided.get(op["id"])
        if done is None:
            outcome.error = (f"operation {op['id']} still {op.get('state')} when the wait "
                             "timed out")
            outcome.status = EXIT_TIMEOUT
        else:
            outcome.op = done
            outcome.error = _op_error(done)
            if outcome.error:
                outcome.status = EXIT_FAILURE
            outcome.power_state = done.get("observed_state")
        results.append(outcome)
    return results


async def power_bulk(ctx, args, api):
    """The bulk form of ``powerctl power``."""
    body = _body(args)
    try:
        doc = await api.call("POST", "/v1/power", body)
    except ApiError as e:
        if e.http_status == 409:
            ctx.err("refused by the blast-radius guard; --dry-run shows the plan, "
                    "--confirm does it")
        raise
    if args.dry_run:
        if args.json:
            ctx.out(output.to_json(doc))
            return EXIT_OK
        ctx.out(output.table(doc.get("nodes") or [], [
            ("NODE", "node"), ("CLUSTER", "cluster"), ("CURRENT", "power_state"),
            ("DESIRED", "desired_state"), ("TARGET", "target"),
            ("CHANGES", lambda n: "yes" if n.get("changes") else "no")]))
        ctx.err(f"dry run: {args.action.value} on {doc.get('count')} nodes, "
                f"{doc.get('changing')} would change; nothing was done")
        if doc.get("needs_confirm"):
            ctx.err("this needs --confirm: it selects more than "
                    f"{doc.get('share', 0):.0%} of a cluster's nodes")
        return EXIT_OK
    ops = doc.get("operations") or []
    if not args.wait:
        if args.json:
            ctx.out(output.to_json(doc))
        else:
            ctx.out(output.table(ops, [("NODE", "node"), ("ACTION", "action"), ("OP", "id"),
                                       ("STATE", "state")]))
        return EXIT_OK
    deadline = ctx.reactor.seconds() + args.timeout
    results = await _follow_all(ctx, api, args, ops, deadline)
    if args.json:
        ctx.out(output.to_json([r.as_json() for r in results]))
    else:
        ctx.out(output.table([attrs.asdict(r) for r in results], [
            ("NODE", "node"), ("ACTION", lambda r: args.action.value),
            ("OP", lambda r: (r["op"] or {}).get("id")),
            ("STATE", lambda r: (r["op"] or {}).get("state")),
            ("POWER", "power_state"), ("ERROR", "error")]))
    for r in results:
        if r.error and not args.json:
            ctx.err(f"error: {r.node}: {r.error}")
    return combine(r.status for r in results)

