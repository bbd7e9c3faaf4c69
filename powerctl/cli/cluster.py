"""
``powerctl cluster list|set``: clusters, their pservs and their drift policy;
``powerctl cluster circuit list|set|delete``: the budgets of power-ons per
electrical circuit.

Also what the other commands check about clusters before they write, so
that a typo or a fleet with nobody to drive it is said plainly instead of
discovered later:

* ``node add`` to a cluster the region has never heard of is refused
  (:func:`require_known_cluster`) unless ``--create-cluster`` asks for it:
  otherwise a mistyped name silently makes a new cluster no pserv serves,
  and the node's first power request stays pending for ever.
* ``power`` warns when a node's cluster has no live pserv
  (:func:`warn_without_live_pserv`): the request is journalled, but nothing
  will run it until a pserv of that cluster connects.

Both ask the API (``GET /v1/clusters``, and ``GET /v1/nodes?cluster=`` only
for clusters without a live pserv), so they stay cheap for large fleets.
"""

from powerctl.cli import EXIT_OK, CliError
from powerctl.cli import output
from powerctl.cli.client import add_command, add_group, api_command, items, q

#: What a cluster does about drift (the region's ``drift.POLICIES``).
DRIFT_POLICIES = ("report", "enforce")


def add_commands(subparsers, parent):
    """Register ``cluster ...``; ``parent`` carries the API options."""
    clusters = add_group(subparsers, "cluster", "clusters and their pservs")
    add_command(clusters, "list", cluster_list, "list clusters", parent)
    p = add_command(clusters, "set", cluster_set, "change a cluster's settings", parent)
    p.add_argument("name")
    p.add_argument("--drift-policy", required=True, choices=DRIFT_POLICIES,
                   help="what a node polled in another state than desired gets: report "
                        "(shown only) or enforce (a 'reconcile' operation to its desired "
                        "state after two consecutive polls)")
    sub = add_group(clusters, "circuit", "budgets of power-ons per electrical circuit")
    p = add_command(sub, "list", circuit_list, "a cluster's circuits and budgets", parent)
    p.add_argument("cluster")
    p = add_command(sub, "set", circuit_set,
                    "set a circuit's budget (power-ons at once, spacing)", parent)
    p.add_argument("cluster")
    p.add_argument("circuit")
    p.add_argument("--max-on", type=int, required=True,
                   help="at most this many power-ons in flight at once on the circuit")
    p.add_argument("--spacing", type=float, default=0.0,
                   help="seconds between the starts of two power-ons (default 0)")
    p = add_command(sub, "delete", circuit_delete, "remove a circuit's budget", parent)
    p.add_argument("cluster")
    p.add_argument("circuit")


def _pservs(cluster):
    """``a (connected), b`` -- a pserv is live while it is connected."""
    pservs = cluster.get("pservs")
    if isinstance(pservs, list):
        names = [
            (f"{p.get('name', '?')} (connected)" if p.get("connected") else p.get("name", "?"))
            if isinstance(p, dict) else str(p)
            for p in pservs
        ]
        return ", ".join(names) or None
    return pservs


def _last_heartbeat(cluster):
    beats = [p.get("last_heartbeat") for p in cluster.get("pservs") or ()
             if isinstance(p, dict) and p.get("last_heartbeat")]
    return output.when(max(beats)) if beats else output.when(cluster.get("last_heartbeat"))


CLUSTER_COLUMNS = [
    ("NAME", "name"),
    ("STATUS", "status"),
    ("NODES", lambda c: c.get("nodes") if not isinstance(c.get("nodes"), list)
     else len(c["nodes"])),
    ("RUNNING", "running_ops"),
    ("IN FLIGHT", "actions_in_flight"),
    ("DRIFT POLICY", "drift_policy"),
    ("DRIFTED", "drifted_nodes"),
    ("LAST HEARTBEAT", _last_heartbeat),
    ("PSERVS", _pservs),
]


@api_command
async def cluster_list(ctx, args, api):
    """``powerctl cluster list``."""
    doc = await api.call("GET", "/v1/clusters")
    if args.json:
        ctx.out(output.to_json(doc))
    else:
        ctx.out(output.table(items(doc, "clusters"), CLUSTER_COLUMNS))
    return EXIT_OK


@api_command
async def cluster_set(ctx, args, api):
    """``powerctl cluster set NAME --drift-policy report|enforce``."""
    doc = await api.call("PUT", f"/v1/clusters/{q(args.name)}",
                         {"drift_policy": args.drift_policy})
    if args.json:
        ctx.out(output.to_json(doc))
    else:
        ctx.out(f"cluster {args.name}: drift policy {(doc or {}).get('drift_policy')}")
    return EXIT_OK


CIRCUIT_COLUMNS = [
    ("CIRCUIT", "name"),
    ("MAX ON", lambda c: c.get("max_on") if c.get("max_on") is not None else "(no budget)"),
    ("SPACING", lambda c: f"{c['spacing']:g}s" if c.get("spacing") is not None else None),
    ("NODES", "nodes"),
]


@api_command
async def circuit_list(ctx, args, api):
    """``powerctl cluster circuit list CLUSTER``."""
    doc = await api.call("GET", f"/v1/clusters/{q(args.cluster)}/circuits")
    if args.json:
        ctx.out(output.to_json(doc))
    else:
        ctx.out(output.table(doc or [], CIRCUIT_COLUMNS))
    return EXIT_OK


@api_command
async def circuit_set(ctx, args, api):
    """``powerctl cluster circuit set CLUSTER CIRCUIT --max-on N [--spacing S]``."""
    doc = await api.call("PUT", f"/v1/clusters/{q(args.cluster)}/circuits/{q(args.circuit)}",
                         {"max_on": args.max_on, "spacing": args.spacing})
    if args.json:
        ctx.out(output.to_json(doc))
    else:
        ctx.out(f"cluster {args.cluster} circuit {args.circuit}: at most "
                f"{doc.get('max_on')} power-on(s) at once, {doc.get('spacing'):g}s apart")
    return EXIT_OK


@api_command
async def circuit_delete(ctx, args, api):
    """``powerctl cluster circuit delete CLUSTER CIRCUIT``."""
    await api.call("DELETE", f"/v1/clusters/{q(args.cluster)}/circuits/{q(args.circuit)}")
    if args.json:
        ctx.out(output.to_json({"cluster": args.cluster, "circuit": args.circuit,
                                "deleted": True}))
    else:
        ctx.out(f"cluster {args.cluster} circuit {args.circuit}: budget removed")
    return EXIT_OK


async def require_known_cluster(api, cluster):
    """CliError (exit 2) when no cluster of that name exists; the message says what to do."""
    known = sorted(c.get("name") for c in await api.call("GET", "/v1/clusters"))
    if cluster not in known:
        raise CliError(
            f"cluster {cluster!r} is unknown (known: {', '.join(known) or 'none'}); check "
            "the name, or pass --create-cluster to create it with this node", "usage")


async def offline_nodes(api, nodes):
    """{cluster: [node, ...]} for the given nodes whose cluster has no live pserv."""
    offline = [c.get("name") for c in await api.call("GET", "/v1/clusters")
               if c.get("status") != "online"]
    wanted = set(nodes)
    found = {}
    for cluster in offline:
        members, _ = await api.collect("/v1/nodes", {"cluster": cluster}, keys=("nodes",))
        names = [n.get("name") for n in members if n.get("name") in wanted]
        if names:
            found[cluster] = names
    return found


async def warn_without_live_pserv(ctx, api, nodes, wait):
    """One line per cluster without a live pserv among ``nodes``' clusters, on stderr."""
    for cluster, names in (await offline_nodes(api, nodes)).items():
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        then = ("--wait waits until one connects or the timeout" if wait
                else "it stays pending until one connects")
        ctx.err(f"warning: no live pserv serves cluster {cluster} (node(s) {shown}): "
                f"the request is recorded but nothing runs it; {then}")
