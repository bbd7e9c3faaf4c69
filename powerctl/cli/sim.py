"""
``powerctl sim ipmi|snmp|redfish``: a simulator in the foreground.

Each simulator module owns its options (``add_arguments(parser)``) and its
start-up (``start(reactor, options)``, returning the simulator or a
Deferred of it, with ``stop()``); this module only wires them to the
command line, refuses anything but a loopback address, prints where the
simulator listens and how to talk to it, and stops it cleanly on Ctrl-C or
SIGTERM.  ``--json`` prints the same as one JSON line, for scripts and
tests that start a simulator and need its port.
"""

import importlib
import ipaddress
import shlex

from twisted.internet import defer

from powerctl.cli import EXIT_OK, UsageError
from powerctl.cli import output

SIMULATORS = {
    "ipmi": "an IPMI 2.0 BMC (UDP)",
    "snmp": "an SNMP PDU",
    "redfish": "a Redfish service (HTTP)",
}


def _module(kind):
    return importlib.import_module(f"powerctl.sim.{kind}")


def add_commands(subparsers):
    """Register ``sim ...``; each simulator contributes its own options."""
    sim = subparsers.add_parser(
        "sim", help="run a simulated BMC, PDU or Redfish service on loopback",
        description=__doc__.split("\n\n")[1])
    kinds = sim.add_subparsers(dest="sim", metavar="KIND")
    kinds.required = True
    for kind, what in SIMULATORS.items():
        p = kinds.add_parser(kind, help=f"simulate {what}")
        _module(kind).add_arguments(p)
        p.add_argument("--json", action="store_true",
                       help="announce the listening address as one JSON line")
        p.set_defaults(func=run_sim)


def _check_loopback(host):
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise UsageError(f"simulators listen on loopback only, not {host!r}")


def describe(kind, sim, options):
    """
    What to print about a running simulator: a dict with ``host``, the
    ports or URL, credentials and a ``powerctl driver`` example per agent.
    """
    host = getattr(options, "host", "127.0.0.1")
    info = {"simulator": kind, "host": host}
    if kind == "ipmi":
        ports = list(getattr(sim, "ports", [sim.port]))
        info.update(ports=ports, username=options.username, password=options.password)
        info["agents"] = [
            {"driver": "ipmi", "params": {
                "host": host, "port": port, "username": options.username,
                "password": options.password}}
            for port in ports
        ]
    elif kind == "snmp":
        write = getattr(options, "write_community", None)
        info.update(port=sim.port, family=options.family, outlets=options.outlets,
                    community=options.community, write_community=write)
        params = {"host": host, "port": sim.port, "family": options.family}
        if getattr(options, "v3_user", None):
            params.update(version="3", user=options.v3_user)
            if options.auth_key:
                params.update(auth_protocol=options.auth_protocol, auth_key=options.auth_key)
            if options.priv_key:
                params.update(priv_protocol=options.priv_protocol, priv_key=options.priv_key)
        else:
            params["community"] = options.community
            if write:
                params["write_community"] = write
        info["agents"] = [
            {"driver": "snmp", "params": dict(params, outlet=n)}
            for n in range(1, options.outlets + 1)
        ]
    elif kind == "redfish":
        auth = not getattr(options, "no_auth", False)
        info.update(url=sim.url, port=sim.port, systems=sorted(sim.systems))
        if auth:
            info.update(username=options.username, password=options.password)
        info["agents"] = [
            {"driver": "redfish", "params": dict(
                {"url": sim.url, "system": system},
                **({"username": options.username, "password": options.password} if auth else {}),
                **({"verify_tls": "false"} if getattr(options, "https", False) else {}))}
            for system in sorted(sim.systems)
        ]
    return info


def example(agent):
    """A ready-to-paste ``powerctl driver query`` for one agent."""
    words = ["powerctl", "driver", "query", "--driver", agent["driver"]]
    for key, value in agent["params"].items():
        words += ["-p", f"{key}={value}"]
    return " ".join(shlex.quote(w) for w in words)


def _announce(ctx, info):
    where = info.get("url") or ", ".join(
        f"{info['host']}:{p}" for p in info.get("ports", [info.get("port")]))
    ctx.out(f"{info['simulator']} simulator listening on {where}")
    creds = [(k, info[k]) for k in ("username", "password", "community",
                                     "write_community", "family", "outlets")
             if info.get(k) is not None]
    if creds:
        ctx.out("  " + "  ".join(f"{k}={output.cell(v)}" for k, v in creds))
    agents = info["agents"]
    for agent in agents[:3]:
        ctx.out("  try: " + example(agent))
    if len(agents) > 3:
        ctx.out(f"  ... and {len(agents) - 3} more")
    ctx.out("Press Ctrl-C to stop.")


async def run_sim(ctx, args):
    """``powerctl sim <kind>``: start, announce, wait for a signal, stop."""
    _check_loopback(getattr(args, "host", "127.0.0.1"))
    try:
        sim = await defer.maybeDeferred(_module(args.sim).start, ctx.reactor, args)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot start the {args.sim} simulator: {e}") from None
    try:
        info = describe(args.sim, sim, args)
        if args.json:
            import json

            ctx.out(json.dumps(info))
        else:
            _announce(ctx, info)
        stopped = defer.Deferred()
        ctx.on_interrupt(lambda: stopped.called or stopped.callback(None))
        await stopped
    finally:
        await defer.maybeDeferred(sim.stop)
    if not args.json:
        ctx.err(f"{args.sim} simulator stopped")
    return EXIT_OK
