"""
``powerctl power ACTION NODE... [--wait]``: power requests, in bulk.

One request per node, several in flight at once; with ``--wait`` each
operation is polled until it is terminal (``powerctl.power.TERMINAL_STATES``)
-- following the operation it coalesced into, whose outcome is its own --
with a progress bar on a terminal.  One node's failure never stops the
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
from powerctl.cli.client import ApiError, api_command, q, requester
from powerctl.cli.driver import positive_float
from powerctl.power import TERMINAL_STATES, Action, OpState

#: Power requests in flight at once for a bulk ``power`` command.
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
                   help="with --wait: seconds between polls (default 1)")
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


async def _wait(api, op, deadline, interval):
    """
    Poll until the operation (or the one it coalesced into, whose outcome
    is ours) is terminal; the final document of the operation that
    decided.  ApiError(kind timeout) once ``deadline`` has passed.
    """
    reactor = api.ctx.reactor
    while True:
        target = op.get("coalesced_into") or op.get("id")
        if op.get("state") in TERMINAL_STATES and (
                not op.get("coalesced_into") or target == op.get("id")):
            return op
        if reactor.seconds() >= deadline:
            raise ApiError(f"operation {target} still {op.get('state')} when "
                           "the wait timed out", "timeout")
        await api.sleep(min(interval, max(0.0, deadline - reactor.seconds())))
        op = await api.call("GET", f"/v1/power_ops/{q(target)}")


async def _one_power(api, args, node, deadline):
    outcome = Outcome(node)
    try:
        op = await api.call("POST", f"/v1/nodes/{q(node)}/power",
                            {"action": args.action.value, "requester": requester()})
        outcome.op = op
        outcome.requested = op.get("id")
        if not args.wait:
            return outcome
        op = await _wait(api, op, deadline, args.poll_interval)
        outcome.op = op
        outcome.error = _op_error(op)
        if outcome.error:
            outcome.status = EXIT_FAILURE
        observed = op.get("observed_state")
        if observed is None:
            doc = await api.call("GET", f"/v1/nodes/{q(node)}")
            observed = doc.get("power_state") if isinstance(doc, dict) else None
        outcome.power_state = observed
    except Interrupted:
        raise
    except CliError as e:
        outcome.error = str(e)
        outcome.status = e.status
        if e.kind == "timeout":
            outcome.status = EXIT_TIMEOUT
    return outcome


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
    (several in flight at once), then with ``--wait`` a poll of each
    operation until it is terminal; a progress bar on a terminal.
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

    async def one(node):
        outcome = await _one_power(api, args, node, deadline)
        progress.advance(ok=outcome.status == EXIT_OK)
        return outcome

    try:
        results = await defer.gatherResults(
            [limit.run(lambda n=n: defer.ensureDeferred(one(n))) for n in nodes],
            consumeErrors=True)
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
