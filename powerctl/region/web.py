"""
The region's web status page (``GET /``) and Prometheus metrics
(``GET /metrics``), on twisted.web, next to the REST API.

Mount both on the root that :func:`powerctl.region.api.api_root` returns::

    root = api_root(store, catalogue, activity=region.activity, ...)
    web.add_to(root, store, activity=region.activity, live_activity=live)

The page is one self-contained HTML document (inline CSS, no script, no
external asset) that refreshes itself every few seconds: clusters and
their pservs, what each connected pserv runs right now (with
``live_activity``, a :class:`powerctl.region.activity.LiveActivity`), the
nodes (desired vs current, mismatches highlighted), the operations in
flight and the last finished ones.  Every value is
HTML-escaped; power configurations are never read, so no secret can show.

``/metrics`` speaks the Prometheus text exposition format 0.0.4.

Both read the store only through its public methods.  A failure answers
500 with an error id; the id and the (sanitised) traceback go to the log
through twisted.logger, never to the client.
"""

import datetime
import html
import uuid as uuidlib
from urllib.parse import quote

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server

from powerctl.region.api import _loggable
from powerctl.power import OP_STATES, POWER_STATES, TERMINAL_STATES, OpState

REFRESH_SECONDS = 5
RECENT_FINISHED = 20
OPEN_OPS_SHOWN = 200  # per open state, on the page
NODES_PER_PAGE = 500
LIVE_NODES_SHOWN = 200  # per pserv, in the "Running now" panel
LIVE_QUEUE_SHOWN = 50  # slot waiters per pserv, in that panel

METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


def mismatched(node):
    """Whether a node is not (yet) in the state it should be in."""
    return node.get("desired_state") is not None and node["desired_state"] != node["power_state"]


def drifted(node):
    """Whether a poll saw the node in another state than desired, nothing open (drift)."""
    return node.get("drift_since") is not None


async def _activity(activity, log):
    """The region's live view of actions in flight per cluster; {} if it cannot say."""
    if activity is None:
        return {}
    try:
        return dict(await defer.maybeDeferred(activity))
    except Exception:
        log.failure("the activity callable failed; showing heartbeat counts")
        return {}


def _clusters_with_activity(clusters, live):
    """``list_clusters()`` rows with this region's actions in flight where it knows them."""
    for cluster in clusters:
        if cluster["name"] in live:
            cluster["actions_in_flight"] = live[cluster["name"]]
    return clusters


class _AsyncResource(resource.Resource):
    """
    A leaf answering GET (and HEAD) from a coroutine ``self.produce(request)``
    returning ``(content_type, body_bytes)``.  Any exception answers 500 with
    an error id that is logged with the traceback.
    """

    isLeaf = True
    error_content_type = b"text/plain; charset=utf-8"

    def __init__(self, store, activity=None, log=None):
        super().__init__()
        self.store = store
        self.activity = activity
        self.log = log or Logger()

    def render(self, request):
        """GET and HEAD are answered (HEAD without a body); anything else is 405."""
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"Allow", b"GET, HEAD")
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"method not allowed; allowed: GET, HEAD\n"
        gone = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d = defer.ensureDeferred(self._answer(request))
        d.addCallback(lambda answer: None if gone else self._write(request, *answer))
        d.addErrback(lambda f: self.log.failure("writing a web answer failed", f))
        return server.NOT_DONE_YET

    async def _answer(self, request):
        try:
            ctype, body = await self.produce(request)
            return 200, ctype, body
        except Exception:
            error_id = str(uuidlib.uuid4())
            self.log.failure(
                "web {method} {path} failed; error id {error_id}", _loggable(Failure()),
                method=request.method.decode("ascii", "replace"),
                path=request.path.decode("utf-8", "replace"), error_id=error_id)
            return 500, self.error_content_type, self.error_body(error_id)

    def error_body(self, error_id):
        return (f"internal error; the region log has the details under error id "
                f"{error_id}\n").encode()

    def _write(self, request, status, ctype, body):
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", ctype)
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.write(body)
        request.finish()

    async def produce(self, request):
        raise NotImplementedError


# -- the status page -------------------------------------------------------


def _e(value):
    """Any value as escaped HTML text; None as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return html.escape(str(value), quote=True)


def _when(value):
    """An ISO timestamp shortened for a table (UTC, to the second), escaped."""
    if not value:
        return ""
    try:
        moment = datetime.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return _e(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.timezone.utc)
    return f'<time datetime="{_e(value)}">{_e(moment.strftime("%Y-%m-%d %H:%M:%S"))}</time>'


def _table(headers, rows, empty="none"):
    """An HTML table; ``rows`` are (css class or "", [cell html, ...])."""
    if not rows:
        return f'<p class="empty">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for css, cells in rows:
        cls = f' class="{_e(css)}"' if css else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1em 2em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.5em}
table{border-collapse:collapse;margin:.3em 0}
th,td{border:1px solid #ccc;padding:2px 8px;text-align:left;vertical-align:top}
th{background:#eee}
tr.mismatch td{background:#fff3cd}
tr.drift td{background:#ffe0b2}
tr.nonresponsive td,tr.offline td,tr.failed td{background:#f8d7da}
.state-on{color:#176b2c;font-weight:bold}.state-off{color:#555;font-weight:bold}
.state-error{color:#b00020;font-weight:bold}.state-unknown{color:#8a6d00}
.empty,.note{color:#666}
ul.pservs{margin:0;padding-left:1.2em}
h3{font-size:1em;margin:1em 0 .2em}
p.error{color:#b00020}
"""


def _state(value):
    if value is None:
        return ""
    return f'<span class="state-{_e(value)}">{_e(value)}</span>'


class StatusPage(_AsyncResource):
    """
    ``GET /``: the region at a glance.  Query parameters (all optional):
    ``cluster`` (only that cluster's nodes), ``problems=1`` (only nodes
    mismatched, non-responsive or with an error), ``after`` (node paging).

    :param store: a :class:`powerctl.region.store.Store`.
    :param activity: optional callable answering (or firing with) a mapping
        of cluster name to actions in flight as this region sees them now.
    :param live_activity: optional callable, called as
        ``live_activity(most=N)``, firing with the document of ``GET
        /v1/activity`` (what the pservs run now) for at most N nodes and
        slot waiters per pserv -- a :class:`powerctl.region.activity.LiveActivity`;
        without it the "Running now" panel is left out.
    """

    error_content_type = b"text/html; charset=utf-8"

    def __init__(self, store, activity=None, log=None, live_activity=None):
        super().__init__(store, activity=activity, log=log)
        self.live_activity = live_activity

    async def _live(self):
        """The live view, or None when there is none (a failure is logged and noted)."""
        if self.live_activity is None:
            return None
        try:
            # the panel shows no more than this: spare the pservs the rest
            return await defer.maybeDeferred(
                self.live_activity, most=max(LIVE_NODES_SHOWN, LIVE_QUEUE_SHOWN) + 1)
        except Exception:
            self.log.failure("asking the pservs what they run failed")
            return {"failed": True}

    def error_body(self, error_id):
        return (
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>powerctl: error</title>"
            "</head><body><h1>Internal error</h1><p>The region log has the details under "
            f"error id <code>{_e(error_id)}</code>.</p></body></html>\n").encode()

    async def produce(self, request):
        args = {k.decode("utf-8", "replace"): v[0].decode("utf-8", "replace")
                for k, v in request.args.items() if v}
        clusters = _clusters_with_activity(
            await self.store.clusters.list(), await _activity(self.activity, self.log))
        nodes = await self.store.nodes.list()
        open_ops = []
        truncated_open = False
        for state in (OpState.RUNNING.value, OpState.PENDING.value):
            ops = await self.store.ops.list(state=state, limit=OPEN_OPS_SHOWN)
            truncated_open |= len(ops) >= OPEN_OPS_SHOWN
            open_ops.extend(ops)
        finished = []
        for state in TERMINAL_STATES:
            finished.extend(await self.store.ops.list(state=state, limit=RECENT_FINISHED))
        finished.sort(key=lambda op: (op.get("finished_at") or "", op["id"]), reverse=True)
        finished = finished[:RECENT_FINISHED]
        live = await self._live()
        body = self.render_page(args, clusters, nodes, open_ops, truncated_open, finished,
                                live=live)
        return b"text/html; charset=utf-8", body.encode("utf-8")

    def render_page(self, args, clusters, nodes, open_ops, truncated_open, finished,
                    live=None):
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        n_mismatch = sum(1 for n in nodes if mismatched(n))
        n_nonresp = sum(1 for n in nodes if not n["responsive"])
        n_drift = sum(1 for n in nodes if drifted(n))
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
            "<title>powerctl region status</title>",
            f"<style>{_STYLE}</style></head><body>",
            "<h1>powerctl region status</h1>",
            f'<p class="note">{_e(now)} &middot; {len(clusters)} clusters &middot; '
            f"{len(nodes)} nodes &middot; {n_mismatch} not in their desired state &middot; "
            f"{n_drift} drifted &middot; "
            f"{n_nonresp} non-responsive &middot; {len(open_ops)}"
            f"{'+' if truncated_open else ''} operations in flight &middot; "
            f"refreshes every {REFRESH_SECONDS} s</p>",
            self._clusters(clusters, nodes),
            self._live_activity(live) if live is not None else "",
            self._open_ops(open_ops, truncated_open),
            self._finished(finished),
            self._nodes(args, nodes),
            "</body></html>\n",
        ]
        return "\n".join(parts)

    def _clusters(self, clusters, nodes):
        per = {}
        for node in nodes:
            counts = per.setdefault(node["cluster"], [0, 0])
            counts[0] += mismatched(node)
            counts[1] += not node["responsive"]
        rows = []
        for c in clusters:
            pservs = "".join(
                f"<li>{_e(p['name'])}: "
                + ("live" if p.get("live") else "connected, no recent heartbeat"
                   if p["connected"] else "disconnected")
                + f", last heartbeat {_when(p.get('last_heartbeat')) or 'never'}"
                + (f", {_e(p['actions_in_flight'])} in flight" if p["connected"] else "")
                + (f", version {_e(p['version'])}" if p.get("version") else "")
                + "</li>"
                for p in c["pservs"])
            mism, nonresp = per.get(c["name"], (0, 0))
            rows.append(("offline" if c["status"] != "online" else "", [
                _e(c["name"]), _e(c["status"]), _e(c["nodes"]), _e(mism), _e(nonresp),
                _e(c["actions_in_flight"]), _e(c.get("running_ops")),
                f'<ul class="pservs">{pservs}</ul>' if pservs else "none",
                f"{_e(c.get('drifted_nodes', 0))} ({_e(c.get('drift_policy', 'report'))})"]))
        return "<h2>Clusters</h2>" + _table(
            ("cluster", "status", "nodes", "mismatched", "non-responsive", "actions in flight",
             "running ops", "pservs", "drifted (policy)"), rows, "no clusters yet")

    def _live_activity(self, doc):
        """The "Running now" panel: per pserv and node, and the slot queue."""
        title = "<h2>Running now</h2>"
        if doc.get("failed"):
            return title + '<p class="error">could not ask the pservs; the region log says why</p>'
        totals = doc.get("totals") or {}
        pservs = doc.get("pservs") or []
        more = "+" if any(len(p.get("nodes") or ()) > LIVE_NODES_SHOWN for p in pservs) else ""
        slot_waiting = sum((p.get("slots") or {}).get("waiting") or 0 for p in pservs)
        parts = [title, (
            f'<p class="note">what the registries of the connected pservs run and hold '
            f"back at this moment (the journal's <em>running</em> only means dispatched) "
            f"&middot; {_e(totals.get('pservs', 0))} pservs &middot; "
            f"{_e(totals.get('running', 0))}{more} running &middot; "
            f"{_e(totals.get('waiting', 0))}{more} waiting &middot; "
            f"{_e(totals.get('joined', 0))}{more} joined &middot; "
            f"{_e(slot_waiting)} waiting for a slot</p>")]
        if not pservs:
            parts.append('<p class="empty">no pserv connected to this region</p>')
        for p in pservs:
            parts.append(self._live_pserv(p))
        return "".join(parts)

    @staticmethod
    def _live_action(a):
        if not a:
            return ""
        text = f"#{_e(a.get('operation_id'))} {_e(a.get('action'))}"
        return text + (" <em>stopping</em>" if a.get("stopping") else "")

    @staticmethod
    def _age(age):
        return "" if age is None else _e(f"{age:.1f} s")

    def _live_pserv(self, p):
        parts = [f"<h3>pserv {_e(p.get('pserv'))} "
                 f'<span class="note">cluster {_e(p.get("cluster"))}</span></h3>']
        if p.get("error"):
            parts.append(f'<p class="error">no complete answer: {_e(p["error"])}'
                         + (" (showing what came before)" if p.get("nodes") else "") + "</p>")
        slots = p.get("slots")
        if slots and slots.get("size"):
            parts.append(f'<p class="note">slots: {_e(slots.get("busy"))} of '
                         f'{_e(slots.get("size"))} busy, {_e(slots.get("waiting"))} '
                         "waiting for a slot</p>")
        nodes = p.get("nodes") or []
        rows = []
        for n in nodes[:LIVE_NODES_SHOWN]:
            running, waiting, query = n.get("running"), n.get("waiting"), n.get("query")
            lead = running or query or {}
            slot = lead.get("slot")
            if slot == "waiting":
                slot = f"waiting (#{lead.get('slot_position')} in the queue)"
            joined = [j for a in (running, waiting, query) if a for j in a.get("joined") or ()]
            total = sum(a.get("joined_total", 0) for a in (running, waiting, query) if a)
            joined_text = ", ".join(_e(j) for j in joined)
            if total > len(joined):
                joined_text += f" &hellip; ({_e(total)} in all)"
            rows.append(("", [
                _e(n.get("node")), self._live_action(running), _when(lead.get("since")),
                self._age(lead.get("age")), _e(slot), joined_text,
                self._live_action(waiting), self._live_action(query)]))
        if len(nodes) > LIVE_NODES_SHOWN:
            parts.append(f'<p class="note">showing the first {LIVE_NODES_SHOWN} busy nodes; '
                         "<code>powerctl activity</code> or "
                         "<code>GET /v1/activity</code> lists them all</p>")
        parts.append(_table(("node", "running", "since", "age", "slot", "joined", "waiting",
                             "query"), rows, "nothing runs or waits here"))
        queue = (slots or {}).get("queue") or []
        if queue:
            shown = queue[:LIVE_QUEUE_SHOWN]
            total = max(len(queue), slots.get("waiting") or 0)
            more = f" (the first {len(shown)} of {total})" if total > len(shown) else ""
            parts.append(f'<p class="note">waiting for a slot, most urgent first{more}</p>')
            parts.append(_table(
                ("#", "node", "operation", "action", "priority", "waiting since", "age"),
                [("", [_e(w.get("position")), _e(w.get("node")), _e(w.get("operation_id")),
                       _e(w.get("action")), _e(w.get("priority")), _when(w.get("since")),
                       self._age(w.get("age"))]) for w in shown]))
        return "".join(parts)

    def _op_row(self, op, finished=False):
        cells = [_e(op["id"]), _e(op["node"]), _e(op["action"]), _e(op["state"]),
                 _e(op.get("pserv")), _e(op.get("requester")), _when(op.get("requested_at")),
                 _when(op.get("started_at"))]
        if finished:
            cells += [_when(op.get("finished_at")), _state(op.get("observed_state")),
                      _e(op.get("coalesced_into") or op.get("superseded_by")),
                      _e(op.get("error"))]
        return ("failed" if op["state"] == OpState.FAILED else "", cells)

    def _open_ops(self, ops, truncated):
        note = (f'<p class="note">showing the newest {OPEN_OPS_SHOWN} of each state; '
                "there are more</p>" if truncated else "")
        return "<h2>Operations in flight</h2>" + note + _table(
            ("id", "node", "action", "state", "pserv", "requester", "requested", "started"),
            [self._op_row(op) for op in ops], "nothing in flight")

    def _finished(self, ops):
        return f"<h2>Last {RECENT_FINISHED} finished operations</h2>" + _table(
            ("id", "node", "action", "state", "pserv", "requester", "requested", "started",
             "finished", "observed", "joined / superseded by", "error"),
            [self._op_row(op, finished=True) for op in ops], "none yet")

    def _nodes(self, args, nodes):
        cluster = args.get("cluster")
        problems = args.get("problems") in ("1", "yes", "true")
        after = args.get("after", "")
        shown = [n for n in nodes
                 if (cluster is None or n["cluster"] == cluster)
                 and (not problems or mismatched(n) or drifted(n) or not n["responsive"]
                      or n["last_error"])]
        total = len(shown)
        shown = [n for n in shown if n["name"] > after]
        more = len(shown) > NODES_PER_PAGE
        shown = shown[:NODES_PER_PAGE]
        rows = []
        for n in shown:
            css = " ".join(c for c, on in (("mismatch", mismatched(n)), ("drift", drifted(n)),
                                            ("nonresponsive", not n["responsive"])) if on)
            rows.append((css, [
                _e(n["name"]), _e(n["cluster"]), _state(n["desired_state"]),
                _state(n["power_state"]),
                "yes" if n["responsive"] else "<strong>no</strong>",
                _e(n["last_error"]), _when(n.get("last_changed_at")),
                _when(n.get("last_queried_at")),
                f"<strong>drifted</strong>: {_state(n.get('drift_observed'))} since "
                f"{_when(n['drift_since'])} ({_e(n.get('drift_polls'))} polls)"
                if drifted(n) else ""]))
        links = ['<a href="/">all nodes</a>', '<a href="/?problems=1">only problems</a>']
        if more:
            query = {k: v for k, v in args.items() if k != "after"}
            query["after"] = shown[-1]["name"]
            links.append('<a href="/?' + _e("&".join(
                f"{quote(k)}={quote(v)}" for k, v in query.items())) + '">next page</a>')
        title = "Nodes" + (f" of cluster {_e(cluster)}" if cluster else "") \
            + (" needing attention" if problems else "")
        return (f"<h2>{title}</h2><p class=\"note\">{total} nodes; mismatched "
                "(desired &ne; current) and drifted (changed behind powerctl's back) rows "
                "are highlighted &middot; "
                + " &middot; ".join(links) + "</p>"
                + _table(("node", "cluster", "desired", "current", "responsive", "last error",
                          "last changed", "last queried", "drift"), rows, "no nodes"))


# -- Prometheus metrics ----------------------------------------------------


def escape_label(value):
    """A label value as the text exposition format 0.0.4 wants it."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text):
    return str(text).replace("\\", "\\\\").replace("\n", "\\n")


class MetricsText:
    """Builds a text exposition: families with HELP and TYPE, then samples."""

    def __init__(self):
        self._lines = []

    def family(self, name, kind, help_text, samples):
        """``samples``: iterable of (labels dict, value)."""
        self._lines.append(f"# HELP {name} {escape_help(help_text)}")
        self._lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if labels:
                text = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())
                self._lines.append(f"{name}{{{text}}} {_number(value)}")
            else:
                self._lines.append(f"{name} {_number(value)}")

    def text(self):
        return "\n".join(self._lines) + "\n"


def _number(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


class Metrics(_AsyncResource):
    """``GET /metrics``: the fleet as Prometheus gauges."""

    async def produce(self, request):
        clusters = _clusters_with_activity(
            await self.store.clusters.list(), await _activity(self.activity, self.log))
        nodes = await self.store.nodes.list()
        counts = await self.store.ops.count_by_state()

        names = sorted({c["name"] for c in clusters} | {n["cluster"] for n in nodes})
        by_state = {(c, s): 0 for c in names for s in POWER_STATES}
        mism = dict.fromkeys(names, 0)
        nonresp = dict.fromkeys(names, 0)
        drift = dict.fromkeys(names, 0)
        for n in nodes:
            key = (n["cluster"], n["power_state"])
            by_state[key] = by_state.get(key, 0) + 1
            mism[n["cluster"]] += mismatched(n)
            nonresp[n["cluster"]] += not n["responsive"]
            drift[n["cluster"]] += drifted(n)
        info = {c["name"]: c for c in clusters}

        out = MetricsText()
        out.family("powerctl_region_up", "gauge", "1 while this region answers.", [({}, 1)])
        out.family("powerctl_nodes", "gauge", "Nodes by cluster and current power state.",
                   [({"cluster": c, "power_state": s}, v)
                    for (c, s), v in sorted(by_state.items())])
        out.family("powerctl_nodes_mismatched", "gauge",
                   "Nodes whose power state differs from their desired state.",
                   [({"cluster": c}, mism[c]) for c in names])
        out.family("powerctl_nodes_nonresponsive", "gauge",
                   "Nodes whose BMC or PDU stopped answering polls.",
                   [({"cluster": c}, nonresp[c]) for c in names])
        out.family("powerctl_nodes_drifted", "gauge",
                   "Nodes polled in another state than desired with no operation open.",
                   [({"cluster": c}, drift[c]) for c in names])
        out.family("powerctl_power_ops", "gauge",
                   "Power operations in the journal by state.",
                   [({"state": s}, counts.get(s, 0)) for s in OP_STATES])
        pservs = {c: info[c]["pservs"] if c in info else [] for c in names}
        out.family("powerctl_pservs_connected", "gauge", "pservs connected, by cluster.",
                   [({"cluster": c}, sum(1 for p in pservs[c] if p["connected"]))
                    for c in names])
        out.family("powerctl_pservs_live", "gauge",
                   "pservs connected with a recent heartbeat, by cluster.",
                   [({"cluster": c}, sum(1 for p in pservs[c] if p.get("live")))
                    for c in names])
        out.family("powerctl_cluster_online", "gauge",
                   "1 while the cluster has a live pserv.",
                   [({"cluster": c}, int(info.get(c, {}).get("status") == "online"))
                    for c in names])
        out.family("powerctl_actions_in_flight", "gauge",
                   "Power actions under way on the cluster's pservs.",
                   [({"cluster": c}, int(info.get(c, {}).get("actions_in_flight") or 0))
                    for c in names])
        return METRICS_CONTENT_TYPE, out.text().encode("utf-8")


def add_to(root, store, activity=None, log=None, live_activity=None):
    """Put the status page at ``/`` and the metrics at ``/metrics`` on ``root``."""
    root.putChild(b"", StatusPage(store, activity=activity, log=log,
                                  live_activity=live_activity))
    root.putChild(b"metrics", Metrics(store, activity=activity, log=log))
    return root
