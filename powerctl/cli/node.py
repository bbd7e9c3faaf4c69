"""
``powerctl node add|list|show|update|delete``: nodes and their power configuration.

Every node shown goes through :mod:`powerctl.cli.redaction` first, so a
secret agent parameter is printed as ``(set)`` whatever the API sent.
"""

from powerctl.cli import EXIT_OK, UsageError
from powerctl.cli import cluster as cluster_checks, output
from powerctl.cli.client import add_command, add_group, api_command, q, requester
from powerctl.cli.params import add_power_options, power_from_args, power_summary, schemas
from powerctl.cli.redaction import redact_node
from powerctl.power import POWER_STATES


def add_commands(subparsers, parent):
    """Register ``node ...``; ``parent`` carries the API options."""
    nodes = add_group(subparsers, "node", "nodes and their power configuration")
    p = add_command(nodes, "add", node_add, "register a node", parent)
    p.add_argument("name")
    p.add_argument("--cluster", "-c", required=True)
    p.add_argument("--create-cluster", action="store_true",
                   help="create the cluster if it does not exist yet (else: an error)")
    p.add_argument("--circuit", help="the electrical circuit it is on (power-ons share "
                   "the circuit's budget: powerctl cluster circuit set)")
    add_power_options(p)
    p = add_command(nodes, "list", node_list, "list nodes (every page)", parent)
    p.add_argument("--cluster", "-c", help="only this cluster")
    p.add_argument("--power-state", choices=POWER_STATES, help="only nodes in this state")
    add_command(nodes, "show", node_show, "one node in detail", parent).add_argument("name")
    p = add_command(nodes, "update", node_update,
                    "change a node's cluster or replace its power configuration", parent)
    p.add_argument("name")
    p.add_argument("--cluster", "-c")
    p.add_argument("--circuit", help="the electrical circuit it is on; \"\" for none")
    add_power_options(p)
    add_command(nodes, "delete", node_delete, "forget a node", parent).add_argument("name")


def _responsive(value):
    if isinstance(value, bool):
        return "responsive" if value else "non-responsive"
    return value


def _drift(drift, short=False):
    """A node's ``drift``: ``off since ... (desired on, 2 polls)``, or nothing."""
    if not isinstance(drift, dict):
        return drift
    observed = drift.get("observed")
    if short:
        return f"{observed} (desired {drift.get('desired')})"
    return (f"{observed} since {output.when(drift.get('since'))} (desired "
            f"{drift.get('desired')}, {drift.get('polls')} polls)")


NODE_COLUMNS = [
    ("NAME", "name"),
    ("CLUSTER", "cluster"),
    ("DESIRED", "desired_state"),
    ("POWER", "power_state"),
    ("RESPONSIVE", "responsive"),
    ("DRIFT", lambda n: _drift(n.get("drift"), short=True)),
    ("AGENTS", lambda n: power_summary(n.get("power"))),
    ("LAST ERROR", "last_error"),
]


def show_node(ctx, node):
    """One node as a ``key: value`` block, one line per agent."""
    first = ["name", "cluster", "desired_state", "power_state", "responsive", "drift",
             "last_error", "last_queried_at", "last_changed_at", "created_at",
             "updated_at"]
    pairs = [(k, _responsive(node.get(k)) if k == "responsive" else _drift(node.get(k))
              if k == "drift" else output.shown(k, node.get(k)))
             for k in first if k in node]
    pairs += [(k, output.shown(k, v)) for k, v in node.items()
              if k not in first and k not in ("power", "bounds")]
    power = node.get("power")
    if isinstance(power, dict) and "levels" in power:
        index = 0
        for number, level in enumerate(power.get("levels") or (), 1):
            if not isinstance(level, dict):
                continue
            trusted = " (trusted unverified)" if level.get("trusted_unverified") else ""
            pairs.append((f"level {number}", f"{len(level.get('agents') or ())} agent(s), "
                          f"all must act{trusted}"))
            for agent in level.get("agents") or ():
                pairs.append((f"agent {index}", _agent_text(agent)))
                index += 1
    elif isinstance(power, dict):
        pairs.append(("mode", power.get("mode") or "single"))
        for i, agent in enumerate(power.get("agents") or ()):
            pairs.append((f"agent {i}", _agent_text(agent)))
    pairs += bounds_pairs(node.get("bounds"))
    ctx.out(output.key_values([p for p in pairs if p[1] is not None]))


def _agent_text(agent):
    """One agent on one line (params already redacted)."""
    if not isinstance(agent, dict):
        return None
    params = " ".join(f"{k}={output.cell(v)}" for k, v in (agent.get("params") or {}).items())
    extra = f" pod_manager={agent['pod_manager']}" if agent.get("pod_manager") else ""
    label = f" label={agent['label']}" if agent.get("label") else ""
    return f"{agent.get('driver')}{extra}{label} {params}".strip()


def _seconds(value):
    return "unbounded" if value is None else f"{value:g}s"


def bounds_pairs(bounds):
    """
    The derived time bounds of each action: the total, then per level and
    per device (``timeout off: 254s (level 1: 127s [bmc 127s]; ...)``).
    """
    if not isinstance(bounds, dict):
        return []
    pairs = []
    for action, b in bounds.items():
        if not isinstance(b, dict):
            continue
        levels = "; ".join(
            f"level {lv.get('level')}: {_seconds(lv.get('bound'))} ["
            + ", ".join(f"{d.get('agent')} {_seconds(d.get('bound'))}"
                        for d in lv.get("devices") or ()) + "]"
            for lv in b.get("levels") or ())
        pairs.append((f"timeout {action}", f"{_seconds(b.get('total'))} ({levels})"))
    return pairs


async def _node_written(ctx, args, node, verb):
    node = redact_node(node, schemas())
    if args.json:
        ctx.out(output.to_json(node))
    elif isinstance(node, dict):
        ctx.err(f"{verb} node {node.get('name', args.name)}")
        show_node(ctx, node)
    else:
        ctx.out(f"{verb} node {args.name}")
    return EXIT_OK


@api_command
async def node_add(ctx, args, api):
    """``powerctl node add NAME --cluster C ...``."""
    body = {"name": args.name, "cluster": args.cluster,
            "power": power_from_args(ctx, args, required=True)}
    if args.circuit:
        body["circuit"] = args.circuit
    if not args.create_cluster:
        await cluster_checks.require_known_cluster(api, args.cluster)
    node = await api.call("POST", "/v1/nodes", body)
    return await _node_written(ctx, args, node, "added")


@api_command
async def node_update(ctx, args, api):
    """
    ``powerctl node update NAME``: sends only what is given; a power
    configuration is replaced as a whole (never merged with the stored
    one, whose secrets the API does not return).
    """
    body = {}
    if args.cluster:
        body["cluster"] = args.cluster
    if args.circuit is not None:
        body["circuit"] = args.circuit or None
    power = power_from_args(ctx, args, required=False)
    if power is not None:
        body["power"] = power
    if not body:
        raise UsageError("nothing to update: give --cluster, --circuit and/or a power "
                         "configuration")
    node = await api.call("PUT", f"/v1/nodes/{q(args.name)}", body)
    return await _node_written(ctx, args, node, "updated")


@api_command
async def node_list(ctx, args, api):
    """``powerctl node list``."""
    found, _ = await api.collect("/v1/nodes", {"cluster": args.cluster,
                                               "power_state": args.power_state},
                                 keys=("nodes",))
    known = schemas()
    nodes = [redact_node(n, known) for n in found]
    if args.json:
        ctx.out(output.to_json(nodes))
        return EXIT_OK
    if args.cluster:
        nodes = [n for n in nodes if n.get("cluster") == args.cluster]
    rows = [dict(n, responsive=_responsive(n.get("responsive"))) for n in nodes]
    ctx.out(output.table(rows, NODE_COLUMNS))
    return EXIT_OK


@api_command
async def node_show(ctx, args, api):
    """``powerctl node show NAME``."""
    node = redact_node(await api.call("GET", f"/v1/nodes/{q(args.name)}"), schemas())
    if args.json:
        ctx.out(output.to_json(node))
    else:
        show_node(ctx, node or {})
    return EXIT_OK


@api_command
async def node_delete(ctx, args, api):
    """``powerctl node delete NAME``."""
    doc = await api.call("DELETE", f"/v1/nodes/{q(args.name)}",
                         query={"requester": requester()})
    if args.json:
        ctx.out(output.to_json(doc if doc is not None else {"deleted": args.name}))
    else:
        ctx.out(f"deleted node {args.name}")
    return EXIT_OK
