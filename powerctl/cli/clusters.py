"""
What the CLI checks about clusters before it writes, so that a typo or a
fleet with nobody to drive it is said plainly instead of discovered later:

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

from powerctl.cli import CliError


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
        members = await api.call("GET", "/v1/nodes", query={"cluster": cluster})
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
