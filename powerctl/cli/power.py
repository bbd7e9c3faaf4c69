"""
``powerctl power ACTION NODE... [--wait]``: power requests, in bulk.

One request per node, several in flight at once; with ``--wait`` every
operation is followed through the region's event stream until it is
terminal (``powerctl.power.TERMINAL_STATES``) -- following the operation it
coalesced into, whose outcome is its own -- however many there are, with a
progress bar on a terminal (:func:`powerctl.cli.events.wait_ops`; polling
only where the stream is unavailable).  One node's failure never stops the
others; the exit status combines them (:func:`powerctl.cli.combine`).

(Named after the command, like the other command modules; the power
vocabulary itself is :mod:`powerctl.power`.)
"""

import argparse

import attrs
from twisted.internet import defer

from powerctl.cli import EXIT_FAILURE, EXIT_OK, EXIT_TIMEOUT, CliError, Interrupted, combine
from powerctl.cli import UsageError, bulk
from powerctl.cli import cluster as cluster_checks, output
from powerctl.cli.client import api_command, q, requester
from powerctl.cli.driver import positive_float
from powerctl.cli.events import wait_ops
from powerctl.power import Action, OpState

#: Power requests in flight at once for a bulk ``power`` command (the
#: waiting that follows is not capped: one event stream follows them all).
CONCURRENCY = 16


def _action(text):
    try:
        return Action.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_commands(subparsers, parent):
    """Register ``power``; ``parent`` carries the API options."""
    p = subparsers.add_parser("power", parents=[parent],
                              help="request power actions and optionally wait")
    p.add_argument("action", type=_action, metavar="ACTION",
                   help="on, off, soft-off, cycle, query or fence (a verified off that "
                        "outranks every other action)")
    p.add_argument("nodes", nargs="*", metavar="NODE",
                   help="one request per node (or --cluster/--nodes: one bulk request)")
    p.add_argument("--wait", "-w", action="store_true",
                   help="wait until every operation has finished")
    p.add_argument("--timeout", type=positive_float, default=600.0, metavar="S",
                   help="with --wait: give up waiting after S seconds (default 600)")
    p.add_argument("--poll-interval", type=positive_float, default=1.0, metavar="S",
                   help="with --wait: seconds between polls when the region has no "
                        "event stream (default 1)")
    bulk.add_options(p)
    p.set_defaults(func=power)


@attrs.define
class Outcome:
    """What happened to one node of a ``power`` command."""

    node: str
    #: the id of the operation our request created (the one shown in OP)
    requested: object = None
    op: dict = None
    power_state: str = None
    error: str = None
    status: int = EXIT_OK

    def as_json(self):
        return {"node": self.node, "requested": self.requested, "op": self.op,
                "power_state": self.power_state, "error": self.error}


def _level_cell(detail):
    """``2: psu-a=off psu-b=off``: the acting level and its devices' states."""
    if not isinstance(detail, dict) or detail.get("level") is None:
        return None
    devices = " ".join(f"{d.get('agent')}={d.get('state')}"
                       for d in detail.get("devices") or () if isinstance(d, dict))
    return f"{detail['level']}: {devices}"


def _op_error(op):
    """Why a terminal operation did not succeed; None if it did."""
    state = op.get("state")
    if state == OpState.SUPERSEDED:
        return f"superseded by operation {op.get('superseded_by')}"
    if state == OpState.CANCELLED:
        return op.get("error") or "cancelled"
    if state == OpState.FAILED:
        return op.get("error") or "failed"
    return None


async def _request(api, args, node):
    """One node's request: its Outcome (with the error if it was refused)."""
    outcome = Outcome(node)
    try:
        op = await api.call("POST", f"/v1/nodes/{q(node)}/power",
                            {"action": args.action.value, "requester": requester()})
        outcome.op = op
        outcome.requested = op.get("id")
    except Interrupted:
        raise
    except CliError as e:
        outcome.error = str(e)
        outcome.status = e.status
    return outcome


async def _settle(api, outcome, decided):
    """Fill in how a waited-for operation ended (and the node's power state)."""
    op = decided.get(outcome.requested)
    if op is None:
        outcome.error = (f"operation {outcome.requested} still "
                         f"{(outcome.op or {}).get('state')} when the wait timed out")
        outcome.status = EXIT_TIMEOUT
        return
    outcome.op = op
    outcome.error = _op_error(op)
    if outcome.error:
        outcome.status = EXIT_FAILURE
    observed = op.get("observed_state")
    if observed is None:
        try:
            doc = await api.call("GET", f"/v1/nodes/{q(outcome.node)}")
            observed = doc.get("power_state") if isinstance(doc, dict) else None
        except Interrupted:
            raise
        except CliError:
            observed = None  # deleted meanwhile: the operation's outcome stands
    outcome.power_state = observed


def _op_cell(row):
    """``7``, or ``7->5`` when operation 7 joined 5, whose outcome it shares."""
    decided = (row["op"] or {}).get("id")
    if row["requested"] is None or decided in (None, row["requested"]):
        return row["requested"]
    return f"{row['requested']}->{decided}"


@api_command
async def power(ctx, args, api):
    """
    ``powerctl power ACTION NODE... [--wait]``: one request per node
    (several in flight at once), then with ``--wait`` every operation
    followed on the event stream until it is terminal; a progress bar on
    a terminal.
    """
    if bulk.wanted(args):
        return await bulk.power_bulk(ctx, args, api)
    if not args.nodes:
        raise UsageError("give at least one NODE, or --cluster/--nodes for a bulk request")
    nodes = list(dict.fromkeys(args.nodes))  # each node once, in order
    await cluster_checks.warn_without_live_pserv(ctx, api, nodes, args.wait)
    deadline = ctx.reactor.seconds() + args.timeout
    progress = output.Progress(
        ctx.stderr, len(nodes),
        enabled=args.wait and len(nodes) > 1 and ctx.isatty(ctx.stderr),
        label=f"{args.action.value} done")
    progress.draw()
    limit = defer.DeferredSemaphore(CONCURRENCY)

    def run_all(fn, items):
        return defer.gatherResults(
            [limit.run(lambda i=i: defer.ensureDeferred(fn(i))) for i in items],
            consumeErrors=True)

    try:
        results = await run_all(lambda node: _request(api, args, node), nodes)
        if args.wait:
            for r in results:
                if r.op is None:
                    progress.advance(ok=False)
            by_id = {r.requested: r for r in results if r.op is not None}

            def done(op_id, op):
                progress.advance(ok=_op_error(op) is None)

            # One event stream for every operation, however many.
            decided = await wait_ops(ctx, api, [r.op for r in by_id.values()], deadline,
                                     on_done=done, poll_interval=args.poll_interval)
            await run_all(lambda r: _settle(api, r, decided), list(by_id.values()))
    except defer.FirstError as e:
        raise e.subFailure.value from None
    finally:
        progress.finish()
    if args.json:
        ctx.out(output.to_json([r.as_json() for r in results]))
    elif args.wait:
        ctx.out(output.table([attrs.asdict(r) for r in results], [
            ("NODE", "node"),
            ("ACTION", lambda r: args.action.value),
            ("OP", _op_cell),
            ("STATE", lambda r: (r["op"] or {}).get("state")),
            ("POWER", "power_state"),
            ("LEVEL", lambda r: _level_cell((r["op"] or {}).get("detail"))),
            ("ERROR", "error"),
        ]))
    else:
        ctx.out(output.table([attrs.asdict(r) for r in results], [
            ("NODE", "node"),
            ("ACTION", lambda r: args.action.value),
            ("OP", lambda r: (r["op"] or {}).get("id")),
            ("STATE", lambda r: (r["op"] or {}).get("state")),
            ("COALESCED INTO", lambda r: (r["op"] or {}).get("coalesced_into")),
            ("ERROR", "error"),
        ]))
    for r in results:
        warning = ((r.op or {}).get("detail") or {}).get("warning") \
            if isinstance((r.op or {}).get("detail"), dict) else None
        if warning and not args.json:
            ctx.err(f"warning: {r.node}: {warning}")
        if r.error and not args.json:
            ctx.err(f"error ({'timeout' if r.status == EXIT_TIMEOUT else 'failed'}): "
                    f"{r.node}: {r.error}")
    return combine(r.status for r in results)
