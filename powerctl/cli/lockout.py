"""
``powerctl lockout list|clear``: BMC credentials the pservs stopped trying
(issue 10).  A node's credentials refused ``auth_failure_limit`` times are
locked out -- no pserv tries them again, across restarts and hand-overs --
until they change or an operator clears the lock-out here (``DELETE
/v1/lockouts/<node>``, operator role, audited).  Clearing reaches the
pserv driving the node at once.
"""

from powerctl.cli import EXIT_OK
from powerctl.cli import output
from powerctl.cli.client import add_command, add_group, api_command, q

LOCKOUT_COLUMNS = [
    ("NODE", "node"),
    ("CLUSTER", "cluster"),
    ("AGENT", "agent"),
    ("FAILURES", "failures"),
    ("PSERV", "pserv"),
    ("SINCE", lambda row: output.when(row.get("locked_at"))),
    ("REASON", "reason"),
]


def add_commands(subparsers, parent):
    """Register ``lockout ...``; ``parent`` carries the API options."""
    group = add_group(subparsers, "lockout", "BMC credentials locked out after refusals")
    p = add_command(group, "list", lockout_list, "nodes whose credentials are locked out",
                    parent)
    p.add_argument("--cluster", default=None, help="only this cluster's nodes")
    p = add_command(group, "clear", lockout_clear, "let the pservs try a node's "
                    "credentials again", parent)
    p.add_argument("nodes", nargs="+", metavar="NODE")


@api_command
async def lockout_list(ctx, args, api):
    """``powerctl lockout list [--cluster C]``."""
    query = {"cluster": args.cluster} if args.cluster else None
    doc = await api.call("GET", "/v1/lockouts", query=query)
    if args.json:
        ctx.out(output.to_json(doc))
    else:
        ctx.out(output.table(doc, LOCKOUT_COLUMNS))
    return EXIT_OK


@api_command
async def lockout_clear(ctx, args, api):
    """``powerctl lockout clear NODE...``."""
    answers = []
    for node in args.nodes:
        doc = await api.call("DELETE", f"/v1/lockouts/{q(node)}")
        answers.append(doc)
        if not args.json:
            cleared = len((doc or {}).get("cleared") or [])
            ctx.out(f"node {node}: {cleared} lock-out(s) cleared" if cleared
                    else f"node {node}: no lock-out")
    if args.json:
        ctx.out(output.to_json(answers))
    return EXIT_OK
