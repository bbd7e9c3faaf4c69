"""
The REST commands: ``node``, ``power``, ``ops``, ``podm``, ``cluster``.

They talk to the region's API (``--api URL``, ``$POWERCTL_API``, default
``http://127.0.0.1:5240``) with treq, print human tables by default and
the API's JSON with ``--json``.  ``--api``, ``--api-timeout`` and ``--json``
go before or after the command (``powerctl --api URL node list``); after
it wins.  An API error (``{"error": {"code",
"message"}}``) becomes one line on stderr and a non-zero exit status:
400/422 exit 2 (bad input: nothing was written), 401/403 exit 3, an
unreachable API exit 4, a timeout exit 5, an answer that is not JSON exit
6, anything else exit 1.

Secrets never reach the terminal: pod-manager passwords are read from a
file or an echo-less prompt, and every agent parameter a driver schema
marks secret (or that looks like one) is shown as ``(set)``.
"""

import json
import re
import urllib.parse
import uuid as uuidlib

import attrs
import treq
from twisted.internet import defer, error as neterror
from twisted.web import client

from powerctl.cli import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_TIMEOUT,
    CliError,
    Interrupted,
    UsageError,
    combine,
    exit_status,
)
from powerctl.cli import credentials, output
from powerctl.cli.driver import add_param_options, parse_pairs, positive_float, read_json_source
from powerctl.power import Action

DEFAULT_API = "http://127.0.0.1:5240"
DEFAULT_API_TIMEOUT = 30.0

#: States of a power operation after which nothing more happens to it.
TERMINAL = frozenset(("succeeded", "failed", "superseded", "cancelled"))

#: Power requests in flight at once for a bulk ``power`` command.
CONCURRENCY = 16

#: Agent keys that are not driver parameters (``label`` is one: the manual
#: driver's).
AGENT_KEYS = ("driver", "pod_manager")

#: Parameter names treated as secret even for a driver we do not know.
_SECRET_NAME = re.compile(r"password|secret|token|community|(^|_)key$", re.I)


# -- talking to the API ---------------------------------------------------

class ApiError(CliError):
    """A request failed; ``status`` is the HTTP status when there was one."""

    def __init__(self, message, kind, http_status=None):
        super().__init__(message, kind)
        self.http_status = http_status

    @property
    def status(self):
        code = self.http_status
        if code in (400, 422):
            return exit_status("config")
        if code in (401, 403):
            return exit_status("auth")
        if code is not None:
            return EXIT_FAILURE
        return exit_status(self.kind)


def _message_of(doc, code):
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict):
        return str(error.get("code") or f"http {code}"), str(error.get("message") or "")
    if isinstance(error, str):
        return f"http {code}", error
    return f"http {code}", "the API refused the request"


class Api:
    """
    A small JSON client of the region API with its own connection pool,
    closed by :meth:`close` so that nothing outlives the command.  Every
    request is bounded by ``timeout`` and cancelled on Ctrl-C.
    """

    def __init__(self, ctx, base, timeout):
        self.ctx = ctx
        self.base = base.rstrip("/")
        self.timeout = timeout
        self.pool = client.HTTPConnectionPool(ctx.reactor, persistent=True)
        agent = client.Agent(ctx.reactor, pool=self.pool, connectTimeout=timeout)
        self.http = treq.client.HTTPClient(agent)

    def close(self):
        return self.pool.closeCachedConnections()

    async def call(self, method, path, body=None, query=None):
        """The decoded JSON answer (None for an empty one); ApiError if not 2xx."""
        url = self.base + path
        kwargs = {"headers": {"Accept": ["application/json"],
                              **credentials.auth_headers(self.ctx.env)}}  # issue 10
        if body is not None:
            kwargs["json"] = body
        if query:
            kwargs["params"] = {k: v for k, v in query.items() if v is not None}

        async def exchange():
            response = await self.http.request(method, url, **kwargs)
            return response, await treq.content(response)

        d = defer.ensureDeferred(exchange())
        remove = self.ctx.on_interrupt(d.cancel)
        d.addTimeout(self.timeout, self.ctx.reactor)
        try:
            response, content = await d
        except defer.TimeoutError:
            raise ApiError(f"{method} {url}: no answer within {self.timeout:g}s",
                           "timeout") from None
        except defer.CancelledError:
            if self.ctx.interrupted:
                raise Interrupted() from None
            raise
        except (neterror.ConnectError, neterror.DNSLookupError,
                client.ResponseFailed, neterror.ConnectionLost) as e:
            raise ApiError(f"cannot reach the API at {self.base}: "
                           f"{_reason(e)}", "unreachable") from None
        finally:
            remove()
        doc = None
        if content.strip():
            try:
                doc = json.loads(content)
            except ValueError:
                if response.code < 400:
                    raise ApiError(f"{method} {url}: answer is not JSON "
                                   f"(HTTP {response.code})", "protocol") from None
        if response.code >= 400:
            code, message = _message_of(doc, response.code)
            raise ApiError(message, code, response.code)
        return doc

    async def sleep(self, seconds):
        from twisted.internet import task

        d = task.deferLater(self.ctx.reactor, seconds, lambda: None)
        remove = self.ctx.on_interrupt(d.cancel)
        try:
            await d
        except defer.CancelledError:
            raise Interrupted() from None
        finally:
            remove()


def _reason(e):
    if isinstance(e, client.ResponseFailed):
        return "; ".join(str(r.value) for r in e.reasons) or "connection lost"
    if isinstance(e, neterror.ConnectionRefusedError):
        return "connection refused"
    return str(e) or type(e).__name__


def q(value):
    """One path segment, quoted."""
    return urllib.parse.quote(str(value), safe="")


def items(doc, *keys):
    """A list from a list answer, bare (``[...]``) or wrapped (``{"nodes": [...]}``)."""
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict):
        for key in keys + ("items", "results", "data"):
            if isinstance(doc.get(key), list):
                return doc[key]
    raise ApiError("unexpected answer from the API (expected a list)", "protocol")


def api_command(fn):
    """
    Wrap ``fn(ctx, args, api)`` into a command: build the client from
    ``--api``/``$POWERCTL_API`` and close its connections afterwards.
    """

    async def command(ctx, args):
        base = args.api or ctx.env.get("POWERCTL_API") or DEFAULT_API
        parts = urllib.parse.urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"--api {base!r} is not an http(s) URL")
        timeout = DEFAULT_API_TIMEOUT if args.api_timeout is None else args.api_timeout
        api = Api(ctx, base, timeout)
        try:
            return await fn(ctx, args, api)
        finally:
            await api.close()

    command.__doc__ = fn.__doc__
    return command


# -- secrets and power configurations -------------------------------------

def _schemas():
    from powerctl.drivers.standard import standard_schemas

    return standard_schemas()


def secret_names(driver, schemas):
    schema = schemas.get(driver)
    return schema.secrets if schema is not None else frozenset()


def is_secret(name, driver, schemas):
    return name in secret_names(driver, schemas) or bool(_SECRET_NAME.search(name))


def redact_power(power, schemas):
    """A copy of a power configuration with every secret parameter hidden."""
    if not isinstance(power, dict) or not isinstance(power.get("agents"), list):
        return power
    agents = []
    for agent in power["agents"]:
        if isinstance(agent, dict) and isinstance(agent.get("params"), dict):
            driver = agent.get("driver")
            agent = dict(agent, params={
                k: (output.REDACTED if is_secret(k, driver, schemas) and v not in (None, "") else v)
                for k, v in agent["params"].items()})
        agents.append(agent)
    return dict(power, agents=agents)


def redact_node(node, schemas):
    if isinstance(node, dict) and "power" in node:
        return dict(node, power=redact_power(node["power"], schemas))
    return node


def split_top_level(text, sep=","):
    """Split on ``sep`` outside quotes and JSON brackets (for ``--agent``)."""
    parts, depth, quote, current = [], 0, None, []
    for ch in text:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def convert_params(driver, params, schemas):
    """
    Convert values the driver's schema knows (ports to numbers, ...), so
    the configuration stored is typed; unknown names are left for the API
    to refuse.  Nothing else is checked here: an agent using a pod manager
    legitimately omits its address and credentials.
    """
    schema = schemas.get(driver)
    if schema is None:
        return params
    declared = {p.name: p for p in schema.params}
    converted = {}
    for key, value in params.items():
        param = declared.get(key)
        if param is not None and value not in (None, ""):
            try:
                value = param.convert(value)
            except ValueError as e:
                raise UsageError(f"{driver} parameter {key!r}: {e}") from None
        converted[key] = value
    return converted


def parse_agent(text, schemas):
    """``driver=ipmi,host=h,password=p`` to ``{"driver", "params", ...}``."""
    pairs = split_top_level(text)
    fields = {}
    for pair in pairs:
        key = pair.partition("=")[0].strip()
        if key in AGENT_KEYS:
            fields[key] = pair.partition("=")[2].strip()
    driver = fields.get("driver")
    if not driver:
        raise UsageError("--agent needs driver=NAME")
    rest = [p for p in pairs if p.partition("=")[0].strip() not in AGENT_KEYS]
    params = parse_pairs(rest, schemas.get(driver))
    agent = {"driver": driver}
    agent.update({k: v for k, v in fields.items() if k != "driver" and v})
    agent["params"] = convert_params(driver, params, schemas)
    return agent


def power_from_args(ctx, args, required):
    """
    The power configuration from ``--driver/-p``, ``--agent`` or
    ``--power-json``; None when none is given and ``required`` is false.
    """
    schemas = _schemas()
    sources = sum(bool(x) for x in (args.driver, args.agent, args.power_json))
    if sources > 1:
        raise UsageError("give one of --driver/-p, --agent or --power-json")
    if not sources:
        if args.params or args.params_json:
            raise UsageError("-p/--params-json need --driver")
        if args.mode:
            raise UsageError("--mode needs the agents (--agent or --driver/-p)")
        if required:
            raise UsageError("a node needs power: --driver NAME -p k=v, "
                             "--agent 'driver=...,k=v' or --power-json FILE")
        return None
    if args.power_json:
        doc = read_json_source(ctx, args.power_json, "--power-json")
        if isinstance(doc, list):
            doc = {"agents": doc}
        if not isinstance(doc, dict) or not isinstance(doc.get("agents"), list) \
                or not doc["agents"]:
            raise UsageError("--power-json needs {\"mode\": ..., \"agents\": [...]} "
                             "or a list of agents")
        if args.mode:
            doc["mode"] = args.mode
        doc.setdefault("mode", "single" if len(doc["agents"]) == 1 else None)
        if doc["mode"] is None:
            raise UsageError("several agents need --mode concurrent or sequential")
        return doc
    if args.driver:
        from powerctl.cli.driver import gather_params

        params = gather_params(ctx, args, schemas.get(args.driver))
        agents = [{"driver": args.driver,
                   "params": convert_params(args.driver, params, schemas)}]
    else:
        if args.params or args.params_json:
            raise UsageError("-p/--params-json go with --driver, not --agent")
        agents = [parse_agent(text, schemas) for text in args.agent]
    mode = args.mode or ("single" if len(agents) == 1 else None)
    if mode is None:
        raise UsageError("several agents need --mode concurrent or sequential")
    if mode == "single" and len(agents) != 1:
        raise UsageError("--mode single takes exactly one agent")
    return {"mode": mode, "agents": agents}


def power_summary(power):
    """``ipmi`` or ``concurrent: ipmi+snmp`` for a table cell."""
    if not isinstance(power, dict):
        return None
    drivers = "+".join(
        str(a.get("driver", "?")) for a in power.get("agents") or () if isinstance(a, dict))
    mode = power.get("mode") or "single"
    return drivers if mode == "single" else f"{mode}: {drivers}"


# -- parsers ----------------------------------------------------------------

def _api_options(parent=None, prefix=""):
    """
    The options every REST command takes (an argparse parent parser); given
    ``parent`` (the top-level parser) they go there instead, stored under
    ``prefix`` + their name, for :func:`apply_global_options`.
    """
    import argparse

    parent = argparse.ArgumentParser(add_help=False) if parent is None else parent
    group = parent.add_argument_group(
        "region API" + (" (REST commands; also accepted after the command, which wins)"
                        if prefix else ""))
    group.add_argument("--api", dest=prefix + "api", metavar="URL", default=None,
                       help=f"region API (default $POWERCTL_API or {DEFAULT_API})")
    group.add_argument("--api-timeout", dest=prefix + "api_timeout", type=positive_float,
                       default=None, metavar="S",
                       help=f"bound on each API request, seconds (default "
                            f"{DEFAULT_API_TIMEOUT:g})")
    group.add_argument("--json", dest=prefix + "json", action="store_true",
                       help="print the API's JSON instead of a table")
    return parent


_GLOBAL = "global_"


def add_global_options(parser):
    """``--api``, ``--api-timeout``, ``--json`` before the command too (``powerctl --api URL
    node list``)."""
    _api_options(parser, _GLOBAL)


def apply_global_options(args):
    """
    Fold the options given before the command into ``args`` (the same
    option given after the command wins; ``$POWERCTL_API`` still only
    fills in a missing ``--api``).  An error message when the command does
    not take one of them, else None.
    """
    for name in ("api", "api_timeout", "json"):
        value = vars(args).pop(_GLOBAL + name, None)
        if value is None or value is False:
            continue
        if not hasattr(args, name):
            option = "--" + name.replace("_", "-")
            return f"{option} does not apply to 'powerctl {args.command}'"
        if name == "json":
            args.json = True
        elif getattr(args, name) is None:
            setattr(args, name, value)
    return None


def _power_options(parser, required):
    add_param_options(parser)
    parser.add_argument("--driver", "-d", metavar="NAME", help="driver of a single agent")
    parser.add_argument("--agent", action="append", default=[], metavar="SPEC",
                        help="an agent as 'driver=ipmi,host=...,password=...' "
                             "(repeat for several; pod_manager=UUID is an agent "
                             "field, the rest driver parameters)")
    parser.add_argument("--power-json", metavar="FILE",
                        help="the whole power configuration as JSON ('-' reads stdin)")
    parser.add_argument("--mode", choices=("single", "concurrent", "sequential"),
                        help="how several agents are driven (default single)")


def add_commands(subparsers):
    """Register ``node``, ``power``, ``ops``, ``podm`` and ``cluster``."""
    parent = _api_options()

    def group(name, help):
        p = subparsers.add_parser(name, help=help)
        sub = p.add_subparsers(dest=f"{name}_command", metavar="COMMAND")
        sub.required = True
        return sub

    def command(sub, name, func, help):
        p = sub.add_parser(name, help=help, parents=[parent])
        p.set_defaults(func=func)
        return p

    nodes = group("node", "nodes and their power configuration")
    p = command(nodes, "add", node_add, "register a node")
    p.add_argument("name")
    p.add_argument("--cluster", "-c", required=True)
    _power_options(p, required=True)
    command(nodes, "list", node_list, "list nodes").add_argument(
        "--cluster", "-c", help="only this cluster")
    command(nodes, "show", node_show, "one node in detail").add_argument("name")
    p = command(nodes, "update", node_update,
                "change a node's cluster or replace its power configuration")
    p.add_argument("name")
    p.add_argument("--cluster", "-c")
    _power_options(p, required=False)
    command(nodes, "delete", node_delete, "forget a node").add_argument("name")

    p = subparsers.add_parser("power", parents=[parent],
                              help="request power actions and optionally wait")
    p.add_argument("action", type=_action, metavar="ACTION",
                   help="on, off, soft-off, cycle or query")
    p.add_argument("nodes", nargs="+", metavar="NODE")
    p.add_argument("--wait", "-w", action="store_true",
                   help="wait until every operation has finished")
    p.add_argument("--timeout", type=positive_float, default=600.0, metavar="S",
                   help="with --wait: give up waiting after S seconds (default 600)")
    p.add_argument("--poll-interval", type=positive_float, default=1.0, metavar="S",
                   help="with --wait: seconds between polls (default 1)")
    p.set_defaults(func=power)

    ops = group("ops", "the journal of power operations")
    p = command(ops, "list", ops_list, "list operations")
    p.add_argument("--node", "-n")
    p.add_argument("--state", "-s", choices=sorted(TERMINAL | {"pending", "running"}))
    p.add_argument("--limit", type=int, metavar="N", help="at most N, newest first "
                   "(the API's default page otherwise)")
    p.add_argument("--before", type=int, metavar="ID", help="only operations older than ID")
    command(ops, "show", ops_show, "one operation").add_argument("id", type=int)
    p = command(ops, "cancel", ops_cancel,
                "cancel open operations (each answered once its device is quiet)")
    p.add_argument("ids", type=int, nargs="+", metavar="ID")
    p.add_argument("--force", action="store_true",
                   help="journal it cancelled even when its pserv cannot be reached")
    p = command(ops, "confirm", ops_confirm,
                "confirm a manual operation: you saw the node reach STATE")
    p.add_argument("id", type=int)
    p.add_argument("--state", required=True, choices=("on", "off"))

    podm = group("podm", "pod managers (shared PDUs, chassis managers, Redfish services)")
    p = command(podm, "add", podm_add, "register a pod manager")
    p.add_argument("name")
    p.add_argument("--url", required=True)
    _podm_options(p)
    p.add_argument("--driver", help="driver used to reach it (the API's default if omitted)")
    command(podm, "list", podm_list, "list pod managers")
    command(podm, "show", podm_show, "one pod manager").add_argument(
        "id", metavar="UUID|NAME")
    p = command(podm, "update", podm_update, "change a pod manager")
    p.add_argument("id", metavar="UUID|NAME")
    p.add_argument("--name", dest="new_name", metavar="NAME", help="rename it")
    p.add_argument("--url")
    p.add_argument("--prompt-password", action="store_true",
                   help="ask for a new password (without echo)")
    _podm_options(p)
    command(podm, "delete", podm_delete, "forget a pod manager").add_argument(
        "id", metavar="UUID|NAME")

    clusters = group("cluster", "clusters and their pservs")
    command(clusters, "list", cluster_list, "list clusters")
    p = command(clusters, "set", cluster_set, "change a cluster's settings")
    p.add_argument("name")
    p.add_argument("--drift-policy", required=True, choices=("report", "enforce"),
                   help="what a node polled in another state than desired gets: report "
                        "(shown only) or enforce (a 'reconcile' operation to its desired "
                        "state after two consecutive polls)")

    p = subparsers.add_parser("activity", parents=[parent],
                              help="what the pservs run right now, what waits, who joined, "
                                   "since when, and their slot queues (exit 1 if a pserv "
                                   "did not answer)")
    p.add_argument("--node", "-n", metavar="NAME", help="only this node")
    p.set_defaults(func=activity)


def _podm_options(p):
    p.add_argument("--username", "-u")
    p.add_argument("--password-file", metavar="FILE",
                   help="read the password from FILE ('-': stdin); never on the command line")
    p.add_argument("--description")


def _action(text):
    import argparse

    try:
        return Action.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# -- nodes --------------------------------------------------------------------

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


def _shown(key, value):
    """A value for a ``key: value`` view: timestamps shortened."""
    return output.when(value) if key.endswith("_at") else value


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


def show_node(ctx, node):
    first = ["name", "cluster", "desired_state", "power_state", "responsive", "drift",
             "last_error", "last_queried_at", "last_changed_at", "created_at",
             "updated_at"]
    pairs = [(k, _responsive(node.get(k)) if k == "responsive" else _drift(node.get(k))
              if k == "drift" else _shown(k, node.get(k)))
             for k in first if k in node]
    pairs += [(k, _shown(k, v)) for k, v in node.items() if k not in first and k != "power"]
    power = node.get("power")
    if isinstance(power, dict):
        pairs.append(("mode", power.get("mode") or "single"))
        for i, agent in enumerate(power.get("agents") or ()):
            if not isinstance(agent, dict):
                continue
            params = " ".join(f"{k}={output.cell(v)}"
                              for k, v in (agent.get("params") or {}).items())
            extra = f" pod_manager={agent['pod_manager']}" if agent.get("pod_manager") else ""
            pairs.append((f"agent {i}", f"{agent.get('driver')}{extra} {params}".strip()))
    ctx.out(output.key_values(pairs))


async def _node_written(ctx, args, node, verb):
    node = redact_node(node, _schemas())
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
    power = power_from_args(ctx, args, required=False)
    if power is not None:
        body["power"] = power
    if not body:
        raise UsageError("nothing to update: give --cluster and/or a power configuration")
    node = await api.call("PUT", f"/v1/nodes/{q(args.name)}", body)
    return await _node_written(ctx, args, node, "updated")


@api_command
async def node_list(ctx, args, api):
    """``powerctl node list``."""
    doc = await api.call("GET", "/v1/nodes", query={"cluster": args.cluster})
    schemas = _schemas()
    nodes = [redact_node(n, schemas) for n in items(doc, "nodes")]
    if args.json:
        ctx.out(output.to_json(nodes if isinstance(doc, list) else dict(doc, nodes=nodes)))
        return EXIT_OK
    if args.cluster:
        nodes = [n for n in nodes if n.get("cluster") == args.cluster]
    rows = [dict(n, responsive=_responsive(n.get("responsive"))) for n in nodes]
    ctx.out(output.table(rows, NODE_COLUMNS))
    return EXIT_OK


@api_command
async def node_show(ctx, args, api):
    """``powerctl node show NAME``."""
    node = redact_node(await api.call("GET", f"/v1/nodes/{q(args.name)}"), _schemas())
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


# -- power --------------------------------------------------------------------

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
        return {"node": self.node, "requested": self.requested, "op": self.op, "power_state": self.power_state,
                "error": self.error}


def _op_error(op):
    state = op.get("state")
    if state == "superseded":
        return f"superseded by operation {op.get('superseded_by')}"
    if state == "cancelled":
        return op.get("error") or "cancelled"
    if state == "failed":
        return op.get("error") or "failed"
    return None


def requester():
    """Who asks, for the journal: ``cli:<login>`` (``cli`` if unknown)."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no login name in some containers
        return "cli"


async def _wait(api, op, deadline, interval):
    """
    Poll until the operation (or the one it coalesced into, whose outcome
    is ours) is terminal; the final document of the operation that
    decided.  ApiError(kind timeout) once ``deadline`` has passed.
    """
    reactor = api.ctx.reactor
    while True:
        target = op.get("coalesced_into") or op.get("id")
        if op.get("state") in TERMINAL and (
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


@api_command
async def power(ctx, args, api):
    """
    ``powerctl power ACTION NODE... [--wait]``: one request per node
    (several in flight at once), then with ``--wait`` a poll of each
    operation until it is terminal; a progress bar on a terminal.
    """
    nodes = list(dict.fromkeys(args.nodes))  # each node once, in order
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
        if r.error and not args.json:
            ctx.err(f"error ({'timeout' if r.status == EXIT_TIMEOUT else 'failed'}): "
                    f"{r.node}: {r.error}")
    return combine(r.status for r in results)


def _op_cell(row):
    """``7``, or ``7->5`` when operation 7 joined 5, whose outcome it shares."""
    decided = (row["op"] or {}).get("id")
    if row["requested"] is None or decided in (None, row["requested"]):
        return row["requested"]
    return f"{row['requested']}->{decided}"


# -- operations ---------------------------------------------------------------

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
    doc = await api.call("GET", "/v1/power_ops", query={
        "node": args.node, "state": args.state, "limit": args.limit, "before": args.before})
    if args.json:
        ctx.out(output.to_json(doc))
    else:
        ctx.out(output.table(items(doc, "power_ops", "ops"), OP_COLUMNS))
    return EXIT_OK


@api_command
async def ops_show(ctx, args, api):
    """``powerctl ops show ID``."""
    op = await api.call("GET", f"/v1/power_ops/{args.id}")
    if args.json:
        ctx.out(output.to_json(op))
    else:
        ctx.out(output.key_values((k, _shown(k, v)) for k, v in (op or {}).items()))
    return EXIT_OK


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


# -- pod managers ---------------------------------------------------------------

PODM_COLUMNS = [
    ("UUID", "uuid"),
    ("NAME", "name"),
    ("DRIVER", "driver"),
    ("URL", "url"),
    ("STATUS", "status"),
    ("USERNAME", "username"),
    ("PASSWORD", lambda p: None if p.get("password_set") is None
     else ("set" if p["password_set"] else "none")),
    ("DESCRIPTION", "description"),
]


def _without_password(doc):
    """The API never returns the password; make sure we never print one."""
    if isinstance(doc, dict) and doc.get("password") not in (None, ""):
        return dict(doc, password=output.REDACTED)
    return doc


def _read_password(ctx, args, prompt):
    """From ``--password-file`` or an echo-less prompt; None if neither."""
    if args.password_file:
        try:
            if args.password_file == "-":
                text = ctx.stdin.readline()
            else:
                with open(args.password_file, encoding="utf-8") as f:
                    text = f.readline()
        except OSError as e:
            raise UsageError(f"--password-file: cannot read it: {e.strerror}") from None
        return text.rstrip("\r\n")
    if prompt:
        if not ctx.isatty(ctx.stdin):
            raise UsageError("no terminal to ask for the password: use --password-file")
        try:
            return ctx.getpass("Password: ")
        except EOFError:
            raise UsageError("no password given") from None
    return None


def _podm_body(args, password):
    body = {k: getattr(args, k) for k in ("url", "username", "description", "driver")
            if getattr(args, k, None) is not None}
    if getattr(args, "new_name", None):
        body["name"] = args.new_name
    if password is not None:
        body["password"] = password
    return body


async def _podm_uuid(api, ident):
    """``ident`` itself when it is a UUID, else the pod manager of that name."""
    try:
        return str(uuidlib.UUID(ident))
    except ValueError:
        pass
    doc = await api.call("GET", "/v1/pod_managers")
    matches = [p for p in items(doc, "pod_managers") if p.get("name") == ident]
    if not matches:
        raise ApiError(f"no pod manager named {ident!r}", "not_found", 404)
    return matches[0]["uuid"]


def _show_podm(ctx, args, doc):
    doc = _without_password(doc)
    if args.json:
        ctx.out(output.to_json(doc))
    else:
        ctx.out(output.key_values((k, _shown(k, v)) for k, v in (doc or {}).items()))


@api_command
async def podm_add(ctx, args, api):
    """``powerctl podm add NAME --url URL [--username U] [--password-file F]``."""
    password = _read_password(ctx, args, prompt=ctx.isatty(ctx.stdin))
    body = dict(_podm_body(args, password), name=args.name)
    _show_podm(ctx, args, await api.call("POST", "/v1/pod_managers", body))
    return EXIT_OK


@api_command
async def podm_list(ctx, args, api):
    """``powerctl podm list``."""
    doc = await api.call("GET", "/v1/pod_managers")
    managers = [_without_password(p) for p in items(doc, "pod_managers")]
    if args.json:
        ctx.out(output.to_json(managers))
    else:
        ctx.out(output.table(managers, PODM_COLUMNS))
    return EXIT_OK


@api_command
async def podm_show(ctx, args, api):
    """``powerctl podm show UUID|NAME``."""
    ident = await _podm_uuid(api, args.id)
    _show_podm(ctx, args, await api.call("GET", f"/v1/pod_manager/{q(ident)}"))
    return EXIT_OK


@api_command
async def podm_update(ctx, args, api):
    """``powerctl podm update UUID|NAME [...]``: sends only what is given."""
    password = _read_password(ctx, args, prompt=args.prompt_password)
    body = _podm_body(args, password)
    if not body:
        raise UsageError("nothing to update")
    ident = await _podm_uuid(api, args.id)
    _show_podm(ctx, args, await api.call("PUT", f"/v1/pod_manager/{q(ident)}", body))
    return EXIT_OK


@api_command
async def podm_delete(ctx, args, api):
    """``powerctl podm delete UUID|NAME``."""
    ident = await _podm_uuid(api, args.id)
    doc = await api.call("DELETE", f"/v1/pod_manager/{q(ident)}")
    if args.json:
        ctx.out(output.to_json(doc if doc is not None else {"deleted": ident}))
    else:
        ctx.out(f"deleted pod manager {ident}")
    return EXIT_OK


# -- clusters -------------------------------------------------------------------

def _pservs(cluster):
    """``a (live), b`` -- a pserv is live while it is connected."""
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


@api_command
async def cluster_list(ctx, args, api):
    """``powerctl cluster list``."""
    doc = await api.call("GET", "/v1/clusters")
    if args.json:
        ctx.out(output.to_json(doc))
        return EXIT_OK
    ctx.out(output.table(items(doc, "clusters"), [
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
    ]))
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


# -- what runs now ----------------------------------------------------------------

@api_command
async def activity(ctx, args, api):
    """``powerctl activity [--node NAME]``: the pservs' live view (``GET /v1/activity``)."""
    from powerctl.cli import activity as view

    doc = await api.call("GET", "/v1/activity", query={"node": args.node})
    ctx.out(output.to_json(doc) if args.json else view.render(doc))
    failed = [p.get("pserv") for p in (doc or {}).get("pservs") or () if p.get("error")]
    if failed:
        ctx.err(f"error: no complete answer from pserv(s) {', '.join(map(str, failed))}")
        return EXIT_FAILURE
    return EXIT_OK
