"""
``powerctl cluster auto-fence show|set|off CLUSTER``: a cluster's automatic
fencing of non-responsive hosts (issue 13; :mod:`powerctl.region.autofence`).

``set`` turns it on with the settings given, the others at their defaults
(it replaces the whole policy, so what ``show`` printed is what runs).
"""

from powerctl.cli import EXIT_OK
from powerctl.cli import output
from powerctl.cli.client import add_command, add_group, api_command, q

#: (option, policy key, type, help)
_SETTINGS = (
    ("--grace", "grace", float, "seconds a node must have been non-responsive (300)"),
    ("--window", "window", float, "seconds of the storm window and rate limit (600)"),
    ("--storm-share", "storm_share", float,
     "more than this share of the cluster down within the window is a storm: no "
     "fencing (0.5)"),
    ("--max-per-window", "max_per_window", int, "automatic fences per window (5)"),
    ("--soft-url", "soft_url", str,
     "POSTed {node, cluster, reason} first (e.g. restart the host's agent)"),
    ("--soft-timeout", "soft_timeout", float,
     "seconds given to the soft step before fencing (30)"),
)


def add_commands(clusters, parent):
    """Register ``cluster auto-fence ...`` under the ``cluster`` group."""
    sub = add_group(clusters, "auto-fence", "automatic fencing of non-responsive hosts")
    p = add_command(sub, "show", show, "a cluster's automatic fencing policy", parent)
    p.add_argument("cluster")
    p = add_command(sub, "set", set_policy,
                    "turn automatic fencing on with these settings", parent)
    p.add_argument("cluster")
    for option, key, kind, text in _SETTINGS:
        p.add_argument(option, dest=key, type=kind, help=text)
    p = add_command(sub, "off", off, "turn a cluster's automatic fencing off", parent)
    p.add_argument("cluster")


def _describe(cluster, policy):
    if not policy.get("enabled"):
        return f"cluster {cluster}: automatic fencing off"
    soft = (f"; soft step {policy['soft_url']} ({policy['soft_timeout']:g} s) first"
            if policy.get("soft_url") else "")
    return (f"cluster {cluster}: automatic fencing on: nodes non-responsive for "
            f"{policy['grace']:g} s are fenced, at most {policy['max_per_window']} per "
            f"{policy['window']:g} s, none while more than {policy['storm_share']:.0%} "
            f"became non-responsive within {policy['window']:g} s{soft}")


@api_command
async def show(ctx, args, api):
    """``powerctl cluster auto-fence show CLUSTER``."""
    doc = await api.call("GET", f"/v1/clusters/{q(args.cluster)}/auto-fence")
    ctx.out(output.to_json(doc) if args.json else _describe(args.cluster, doc))
    return EXIT_OK


@api_command
async def set_policy(ctx, args, api):
    """``powerctl cluster auto-fence set CLUSTER [--grace S] ...``."""
    body = {"enabled": True}
    for _, key, _, _ in _SETTINGS:
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    doc = await api.call("PUT", f"/v1/clusters/{q(args.cluster)}/auto-fence", body)
    ctx.out(output.to_json(doc) if args.json else _describe(args.cluster, doc))
    return EXIT_OK


@api_command
async def off(ctx, args, api):
    """``powerctl cluster auto-fence off CLUSTER``."""
    await api.call("DELETE", f"/v1/clusters/{q(args.cluster)}/auto-fence")
    ctx.out(output.to_json({"cluster": args.cluster, "enabled": False}) if args.json
            else _describe(args.cluster, {}))
    return EXIT_OK
