"""
The region's web status page (``GET /``) and Prometheus metrics
(``GET /metrics``), on twisted.web, next to the REST API.

Mount both on the root that :func:`powerctl.region.api.api_root` returns::

    root = api_root(store, catalogue, activity=region.activity, ...)
    web.add_to(root, store, activity=region.activity, live_activity=live)

The page is one self-contained HTML document (inline CSS, no external
asset) that refreshes itself every few seconds -- or, served with the event
stream (``add_to(..., events=...)``), keeps its node and operation rows
current in place through a small inline script following ``/events``
(EventSource) and reloads only every minute: a summary strip
(nodes by power state, problems, operations running and waiting), the
nodes (desired vs current, mismatches highlighted, filtered and paged by
plain GET parameters, times shown as ages), the operations in flight, what
each connected pserv runs right now (with ``live_activity``, a
:class:`powerctl.region.activity.LiveActivity`), the last finished
operations and the clusters with their pservs.  It is built with
``twisted.web.template`` trees, so every value is escaped by construction;
the parts there are many of (table rows, times, states) are written
straight as escaped text for speed, each keeping the tree it stands for,
and the tests hold that text to what twisted.web writes for the tree.
Everything it shows is read in one SQL statement
(:meth:`~powerctl.region.store.nodes.NodeStore.overview`); power
configurations are never read, so no secret can show.

``/metrics`` speaks the Prometheus text exposition format 0.0.4, from one
statement too (:meth:`~powerctl.region.store.nodes.NodeStore.fleet`).

Both read the store only through its public methods.  A failure answers
500 with an error id; the id and the (sanitised) traceback go to the log
through twisted.logger, never to the client.

Why one module of this size: the page's template, its rows and the
metrics text all read the same store answers through the same few
helpers (ages, state classes, live activity); split, each half would
import most of the other.
"""

import datetime
from types import GeneratorType
from urllib.parse import urlencode

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web import template
from twisted.web.iweb import IRenderable
from zope.interface import implementer
from twisted.web.template import Tag, tags

from powerctl.region.resource import AsyncResource
from powerctl.power import OP_STATES, POWER_STATES, TERMINAL_STATES, OpState

REFRESH_SECONDS = 5
RECENT_FINISHED = 20
OPEN_OPS_SHOWN = 200  # per open state, on the page
NODES_PER_PAGE = 100  # node rows per page unless ?limit= says otherwise
NODES_PER_PAGE_MAX = 1000
LIVE_NODES_SHOWN = 200  # per pserv, in the "Running now" panel
LIVE_QUEUE_SHOWN = 50  # slot waiters per pserv, in that panel

METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


def mismatched(node):
    """Whether a node is not (yet) in the state it should be in."""
    return node.get("desired_state") is not None and node["desired_state"] != node["power_state"]


def drifted(node):
    """Whether a poll saw the node in another state than desired, nothing open (drift)."""
    return node.get("drift_since") is not None


def counts_of(nodes):
    """
    Node rows reduced to what :meth:`NodeStore.overview`'s ``counts`` are (one row per
    cluster and power state): the page's pure tests hand rows, the region
    hands the GROUP BY.
    """
    groups = {}
    for n in nodes:
        g = groups.setdefault((n["cluster"], n["power_state"]), {
            "cluster": n["cluster"], "power_state": n["power_state"], "nodes": 0,
            "mismatched": 0, "nonresponsive": 0, "drifted": 0})
        g["nodes"] += 1
        g["mismatched"] += mismatched(n)
        g["nonresponsive"] += not n["responsive"]
        g["drifted"] += drifted(n)
    return [groups[k] for k in sorted(groups)]


def page_of(nodes, cluster=None, name="", problems=False, after="", limit=NODES_PER_PAGE):
    """
    One page of the node table from node rows, as :meth:`NodeStore.overview`'s ``page``
    answers it in SQL: ``{"nodes", "total", "before", "more"}``.
    """
    shown = sorted((n for n in nodes
                    if (cluster is None or n["cluster"] == cluster) and name in n["name"]
                    and (not problems or mismatched(n) or drifted(n) or not n["responsive"]
                         or n["last_error"])), key=lambda n: n["name"])
    later = [n for n in shown if n["name"] > after]
    return {"nodes": later[:limit], "more": len(later) > limit, "total": len(shown),
            "before": len(shown) - len(later)}


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


class _AsyncResource(AsyncResource):
    """
    A leaf answering GET (and HEAD) from a coroutine ``self.produce(request)``
    returning ``(content_type, body_bytes)``.  Any exception answers 500 with
    an error id that is logged with the traceback (see
    :class:`powerctl.region.resource.AsyncResource`).
    """

    error_content_type = b"text/plain; charset=utf-8"

    def __init__(self, store, activity=None, log=None):
        super().__init__(log)
        self.store = store
        self.activity = activity

    def render(self, request):
        """GET and HEAD are answered (HEAD without a body); anything else is 405."""
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"Allow", b"GET, HEAD")
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"method not allowed; allowed: GET, HEAD\n"
        return super().render(request)

    async def answer(self, request):
        ctype, body = await self.produce(request)
        return 200, ctype, body

    def internal_error(self, request, error_id):
        return 500, self.error_content_type, self.error_body(error_id)

    def error_body(self, error_id):
        return (f"internal error; the region log has the details under error id "
                f"{error_id}\n").encode()

    def write(self, request, answer):
        status, ctype, body = answer
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", ctype)
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.write(body)
        request.finish()

    async def produce(self, request):
        raise NotImplementedError


# -- the status page -------------------------------------------------------
#
# Built as a twisted.web.template tree and flattened: every string put in
# the tree is text, escaped by the flattener, so no value from the
# database (node names, error texts, requesters) can become markup however
# it got there.  Nothing here writes HTML by hand.


def _flat(element):
    """
    A template tree flattened to text, as twisted.web's flattener writes
    it, byte for byte (``tests/test_web.py`` checks), in one plain
    recursive pass.

    Why not ``flattenString``: it is a trampoline of generators built to
    wait on Deferreds at any node, and the status page's tree (about 5,000
    nodes for 100 node rows) holds none; it spent ~80 % of the page's
    rendering there.  This pass accepts only what the page builds --
    text, tags without renderers or slots, and lists, tuples and
    generators of them -- and refuses anything else (TypeError), so a
    value can never reach the output unescaped by taking another path.
    """
    out = []
    _flatten_into(element, out)
    return "".join(out)


#: Elements written self-closing when empty, as twisted.web's flattener
#: writes them (its list is private; the page uses meta and input).
_VOID = frozenset(("img", "br", "hr", "base", "meta", "link", "param", "area", "input", "col",
                   "basefont", "isindex", "frame", "command", "embed", "keygen", "source",
                   "track", "wbs"))


def _escape(text):
    """Text content escaped as the flattener does: ``&``, ``<`` and ``>``."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _escape_attribute(text):
    """An attribute value escaped as the flattener does: ``&<>`` and ``"``."""
    return _escape(text).replace('"', "&quot;")


@implementer(IRenderable)
class _Rendered:
    """
    A piece of the page already written as text by a fast path (a table
    row, a time, a state), with the template tree it stands for.

    :func:`_flat` takes ``text`` as it is; twisted.web's flattener sees an
    ``IRenderable`` and flattens the tree that ``render`` builds -- so the
    tests can hold every fast path to what the template would have
    written.  Only this module makes them, always escaping every value
    with :func:`_escape` or :func:`_escape_attribute`.
    """

    __slots__ = ("text", "_tree")

    def __init__(self, text, tree):
        self.text = text
        self._tree = tree  # a callable building the equivalent tree

    def render(self, request):
        return self._tree()

    def lookupRenderMethod(self, name):
        raise ValueError(f"no render method {name!r}")


def _flatten_into(element, out):
    """Append the text of ``element`` to ``out`` (see :func:`_flat`)."""
    if type(element) is _Rendered:
        out.append(element.text)
    elif isinstance(element, str):
        out.append(_escape(element))
    elif isinstance(element, Tag):
        if element.render is not None or element.slotData:
            raise TypeError("the page's tags carry no renderer or slot")
        name = element.tagName
        if not name:
            _flatten_into(element.children, out)
            return
        out.append("<" + name)
        for key, value in element.attributes.items():
            if not isinstance(value, str):
                raise TypeError(f"attribute {key!r}: only text, not {type(value).__name__}")
            out.append(f' {key}="{_escape_attribute(value)}"')
        if element.children or name not in _VOID:
            out.append(">")
            _flatten_into(element.children, out)
            out.append(f"</{name}>")
        else:
            out.append(" />")
    elif isinstance(element, (list, tuple, GeneratorType)):
        for child in element:
            _flatten_into(child, out)
    else:
        raise TypeError(f"cannot put a {type(element).__name__} in the page")


def _flat_twisted(element):
    """
    The same tree through twisted.web's own flattener: what :func:`_flat`
    must equal (the tests compare them on whole pages).
    """
    out = []
    template.flattenString(None, element).addBoth(out.append)
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0].decode("utf-8")


def _text(value):
    """Any value as the text a cell shows; None as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _e(value):
    """Any value as the page shows it: escaped exactly as the flattener escapes text."""
    return _flat(_text(value))


def _plural(count, word, plural=None):
    """'1 operation', '2 operations': the page says what it counts in English."""
    return f"{count} {word if count == 1 else (plural or word + 's')}"


def _moment(value):
    """An ISO timestamp as an aware UTC datetime, or None when it is not one."""
    try:
        moment = datetime.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc)


def relative(seconds):
    """
    A duration as an operator reads it at a glance ("42 s", "7 min",
    "3 h", "2 d"): short enough never to wrap in a table cell.
    """
    seconds = abs(seconds)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


def _when(value, now=None):
    """
    A timestamp cell: the age relative to ``now`` ("5 min ago"), the exact
    UTC time as the tooltip and the ISO value in ``datetime``, so nothing is
    lost and nothing wraps.
    """
    if not value:
        return ""
    moment = _moment(value)
    if moment is None:
        return _text(value)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    delta = (now - moment).total_seconds()
    shown = f"{relative(delta)} ago" if delta >= 0 else f"in {relative(delta)}"
    title = moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    return _Rendered(
        f'<time datetime="{_escape_attribute(value)}" title="{title}">{_escape(shown)}</time>',
        lambda: tags.time(datetime=value, title=title)(shown))


def _cell(cell):
    """A cell's content as page text: text escaped, anything else flattened."""
    return _escape(cell) if type(cell) is str else _flat(cell)


def _row(css, cells, attributes):
    """
    One table row, written directly (rows are most of the page): ``css``
    the class ("" for none), ``attributes`` more of them (``data-*``).
    """
    head = f' class="{_escape_attribute(css)}"' if css else ""
    for key, value in attributes.items():
        head += f' {key}="{_escape_attribute(value)}"'
    text = f"<tr{head}>" + "".join(f"<td>{_cell(c)}</td>" for c in cells) + "</tr>"

    def tree():
        tr = tags.tr(class_=css, **attributes) if css else tags.tr(**attributes)
        return tr([tags.td(cell) for cell in cells])

    return _Rendered(text, tree)


def _table(headers, rows, empty="none", css=None):
    """A table; ``rows`` are (css class or "", [cell, ...]) with text or tags as cells."""
    if not rows:
        return tags.p(class_="empty")(empty)
    body = [_row(row_css, cells, attributes[0] if attributes else {})
            for row_css, cells, *attributes in rows]
    table = tags.table(class_=css) if css else tags.table()
    return table(tags.thead(tags.tr([tags.th(h) for h in headers])), tags.tbody(body))


def _state(value):
    """A power state, coloured by its class."""
    if value is None:
        return ""
    value = _text(value)
    return _Rendered(
        f'<span class="state-{_escape_attribute(value)}">{_escape(value)}</span>',
        lambda: tags.span(class_=f"state-{value}")(value))


def _note(*parts):
    """A grey line of facts separated by middle dots."""
    out = []
    for part in parts:
        if out:
            out.append(" \N{MIDDLE DOT} ")
        out.append(part)
    return tags.p(class_="note")(out)


# The page's style, inline (no external asset).  Without a "<", ">" or "&"
# in it, the flattener's escaping leaves it as written.  Tables take the
# page's width and wrap long texts anywhere, so the page never scrolls
# sideways at 1280 px; times never wrap.
_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:.5em 1em;color:#222}
h1{font-size:1.3em;margin:.2em 0}h2{font-size:1.1em;margin:1.2em 0 .3em}
h3{font-size:1em;margin:1em 0 .2em}
table{border-collapse:collapse;margin:.3em 0;width:100%}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top;
overflow-wrap:anywhere}
th{background:#eee;white-space:nowrap}
time{white-space:nowrap}
tr.mismatch td{background:#fff3cd}
tr.drift td{background:#ffe0b2}
tr.nonresponsive td,tr.offline td,tr.failed td{background:#f8d7da}
.state-on{color:#176b2c;font-weight:bold}.state-off{color:#555;font-weight:bold}
.state-error{color:#b00020;font-weight:bold}.state-unknown{color:#8a6d00}
.empty,.note{color:#666}
ul.pservs{margin:0;padding-left:1.2em}
p.error{color:#b00020}
ul.summary{display:flex;flex-wrap:wrap;gap:.4em;list-style:none;margin:.3em 0;padding:0}
ul.summary li{border:1px solid #ccc;border-radius:4px;padding:.2em .6em;background:#fafafa}
ul.summary li.bad{background:#f8d7da}ul.summary li.warn{background:#fff3cd}
ul.summary b{font-size:1.15em}
form.filter{margin:.3em 0}form.filter label{margin-right:1em}
"""

#: Seconds between reloads of a page whose rows follow the event stream.
LIVE_RELOAD_SECONDS = 60

# The page's live rows (issue 14): follow /events from the position the
# page was read at (html data-seq) and rewrite the node and operation rows
# in place.  Like the style, written without "<", ">" or "&" so that the
# flattener leaves it as it is; values go in as text, never as markup.
_LIVE_SCRIPT = """
(function () {
  var root = document.documentElement;
  if (!window.EventSource) { return; }
  var source = new EventSource("/events?after=" + root.getAttribute("data-seq"));
  root.setAttribute("data-live", "connecting");
  source.addEventListener("open", function () { root.setAttribute("data-live", "on"); });
  source.addEventListener("error", function () { root.setAttribute("data-live", "off"); });
  function state(value) {
    var span = document.createElement("span");
    if (value) { span.className = "state-" + value; span.textContent = value; }
    return span;
  }
  function put(cell, child) { cell.textContent = ""; cell.appendChild(child); }
  function rows(attribute, value) {
    var found = [], all = document.querySelectorAll("tr[" + attribute + "]");
    for (var i = 0; i !== all.length; i++) {
      if (all[i].getAttribute(attribute) === String(value)) { found.push(all[i]); }
    }
    return found;
  }
  source.addEventListener("node", function (e) {
    var doc = JSON.parse(e.data), n = doc.node;
    rows("data-node", n.name).forEach(function (row) {
      var cells = row.cells;
      row.setAttribute("data-seq", e.lastEventId);
      if (doc.change === "deleted") { row.classList.add("gone"); return; }
      put(cells[2], state(n.desired_state));
      put(cells[3], state(n.power_state));
      if (n.responsive) { cells[4].textContent = "yes"; }
      else { var no = document.createElement("strong"); no.textContent = "no"; put(cells[4], no); }
      cells[5].textContent = n.last_error || "";
      row.classList.toggle("mismatch", n.desired_state ? n.desired_state !== n.power_state : false);
      row.classList.toggle("nonresponsive", !n.responsive);
    });
  });
  source.addEventListener("op", function (e) {
    var op = JSON.parse(e.data).op;
    rows("data-op", op.id).forEach(function (row) {
      row.setAttribute("data-seq", e.lastEventId);
      row.cells[3].textContent = op.state;
      row.cells[4].textContent = op.pserv || "";
      row.classList.toggle("failed", op.state === "failed");
    });
  });
  setTimeout(function () { location.reload(); }, %d000);
})();
""" % LIVE_RELOAD_SECONDS

#: Query parameters of the page, all optional.
PAGE_ARGS = ("cluster", "problems", "name", "after", "limit")


class StatusPage(_AsyncResource):
    """
    ``GET /``: the region at a glance.  First a summary strip (nodes by
    power state, mismatched, non-responsive, drifted, operations running
    and waiting), then the nodes, then the operations in flight, what the
    pservs run now, the last finished operations, and the clusters.

    Query parameters of the nodes table (all optional): ``cluster`` (only
    that cluster's nodes), ``problems=1`` (only nodes mismatched, drifted,
    non-responsive or with an error), ``name`` (names containing it),
    ``after`` (paging by name) and ``limit`` (rows per page, at most
    :data:`NODES_PER_PAGE_MAX`).

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

    def __init__(self, store, activity=None, log=None, live_activity=None, live_events=False):
        super().__init__(store, activity=activity, log=log)
        self.live_activity = live_activity
        self.live_events = live_events  # /events is served next to the page

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
        return ("<!DOCTYPE html>\n" + _flat(tags.html(lang="en")(
            tags.head(tags.meta(charset="utf-8"), tags.title("powerctl: error")),
            tags.body(tags.h1("Internal error"), tags.p(
                "The region log has the details under error id ",
                tags.code(error_id), "."))))).encode("utf-8")

    async def produce(self, request):
        args = {k.decode("utf-8", "replace"): v[0].decode("utf-8", "replace")
                for k, v in request.args.items() if v}
        cluster, problems, name, after, limit = self._node_filter(args)
        # One statement, one snapshot (issue 14): the journal's position
        # (the page's live stream resumes after it), the counts, the
        # clusters, the node page and the operations panels.  The pservs
        # are asked what they run meanwhile.
        reading = self.store.nodes.overview(
            self.store.clusters.heartbeat_timeout, cluster=cluster, name=name,
            problems=problems, after_name=after, limit=limit,
            open_states=(OpState.RUNNING.value, OpState.PENDING.value),
            open_limit=OPEN_OPS_SHOWN, finished_states=TERMINAL_STATES,
            finished_limit=RECENT_FINISHED, seq=self.live_events)
        try:
            live = await self._live()
            activity = await _activity(self.activity, self.log)
        finally:
            doc = await reading  # its failure, if any, is not left unhandled
        clusters = _clusters_with_activity(doc["clusters"], activity)
        open_ops = doc["open"]
        truncated_open = any(sum(1 for op in open_ops if op["state"] == state)
                             >= OPEN_OPS_SHOWN for state in (OpState.RUNNING, OpState.PENDING))
        body = self.render_page(args, clusters, (), open_ops, truncated_open, doc["finished"],
                                live=live, counts=doc["counts"], node_page=doc["page"],
                                seq=doc["seq"])
        return b"text/html; charset=utf-8", body.encode("utf-8")

    def render_page(self, args, clusters, nodes, open_ops, truncated_open, finished,
                    live=None, now=None, counts=None, node_page=None, seq=None):
        """
        The whole page as text, from what :meth:`produce` read (no I/O
        here): the region passes ``counts`` and ``node_page`` (both of
        :meth:`NodeStore.overview`); without them both are
        worked out from the node rows ``nodes``.  With ``seq`` (the event
        journal's position when the page was read), a small inline script
        follows ``/events`` from there and updates node and operation rows
        in place; the page then reloads only every
        :data:`LIVE_RELOAD_SECONDS` (for the summary and the panels).
        Without it, or without JavaScript, it reloads every
        :data:`REFRESH_SECONDS`.
        """
        return "<!DOCTYPE html>\n" + _flat(self.page_tree(
            args, clusters, nodes, open_ops, truncated_open, finished, live=live, now=now,
            counts=counts, node_page=node_page, seq=seq)) + "\n"

    def page_tree(self, args, clusters, nodes, open_ops, truncated_open, finished,
                  live=None, now=None, counts=None, node_page=None, seq=None):
        """The page's template tree (:meth:`render_page` flattens it)."""
        now = now or datetime.datetime.now(datetime.timezone.utc)
        if counts is None:
            counts = counts_of(nodes)
        if node_page is None:
            cluster, problems, name, after, limit = self._node_filter(args)
            node_page = page_of(nodes, cluster, name, problems, after, limit)
        refresh = tags.meta(**{"http-equiv": "refresh", "content": str(REFRESH_SECONDS)})
        page = tags.html(lang="en", **({"data-seq": str(seq)} if seq is not None else {}))(
            tags.head(
                tags.meta(charset="utf-8"),
                tags.noscript(refresh) if seq is not None else refresh,
                tags.meta(name="viewport", content="width=device-width, initial-scale=1"),
                tags.title("powerctl region status"),
                tags.style(_STYLE)),
            tags.body(
                tags.h1("powerctl region status"),
                self._summary(clusters, counts, open_ops, truncated_open, now,
                              live_rows=seq is not None),
                self._nodes(args, clusters, node_page, now),
                self._open_ops(open_ops, truncated_open, now),
                self._live_activity(live, now) if live is not None else "",
                self._finished(finished, now),
                self._clusters(clusters, counts, now),
                tags.script(id="live-rows")(_LIVE_SCRIPT) if seq is not None else ""))
        return page

    def _summary(self, clusters, counts, open_ops, truncated_open, now, live_rows=False):
        """
        The strip an operator reads first: one box per count, problems
        highlighted, each with an id a script (or test) can find.
        """
        more = "+" if truncated_open else ""
        by_state = {state: 0 for state in POWER_STATES}
        for g in counts:
            by_state[g["power_state"]] = by_state.get(g["power_state"], 0) + g["nodes"]
        total = sum(g["nodes"] for g in counts)
        running = sum(1 for op in open_ops if op["state"] == "running")
        waiting = sum(1 for op in open_ops if op["state"] == "pending")
        online = sum(1 for c in clusters if c["status"] == "online")

        def box(key, count, label, css=""):
            li = tags.li(id=f"summary-{key}")
            if css and count:
                li(class_=css)
            return li(tags.b(f"{count}{more if key.startswith('ops-') else ''}"), " ", label)

        items = [box("nodes", total, "node" if total == 1 else "nodes")]
        items += [box(f"state-{state}", count, state, "bad" if state == "error" else "")
                  for state, count in by_state.items()]
        items += [
            box("mismatched", sum(g["mismatched"] for g in counts),
                "not in their desired state", "warn"),
            box("nonresponsive", sum(g["nonresponsive"] for g in counts),
                "non-responsive", "bad"),
            box("drifted", sum(g["drifted"] for g in counts), "drifted", "warn"),
            box("ops-running", running, "operation running" if running == 1
                else "operations running"),
            box("ops-waiting", waiting, "operation waiting" if waiting == 1
                else "operations waiting"),
            box("clusters", len(clusters), f"{'cluster' if len(clusters) == 1 else 'clusters'}"
                f", {online} online"),
        ]
        return [tags.ul(class_="summary")(items), _note(
            f"as of {now.strftime('%Y-%m-%d %H:%M:%S UTC')}",
            f"rows follow the event stream; the page reloads every {LIVE_RELOAD_SECONDS} s"
            if live_rows else f"refreshes every {REFRESH_SECONDS} s")]

    def _clusters(self, clusters, counts, now):
        per = {}
        for g in counts:
            sums = per.setdefault(g["cluster"], [0, 0])
            sums[0] += g["mismatched"]
            sums[1] += g["nonresponsive"]
        rows = []
        for c in clusters:
            pservs = []
            for p in c["pservs"]:
                status = ("live" if p.get("live") else "connected, no recent heartbeat"
                          if p["connected"] else "disconnected")
                heartbeat = _when(p.get("last_heartbeat"), now) or "never"
                pservs.append(tags.li(
                    f"{p['name']}: {status}, last heartbeat ", heartbeat,
                    f", {p['actions_in_flight']} in flight" if p["connected"] else "",
                    f", version {p['version']}" if p.get("version") else ""))
            mism, nonresp = per.get(c["name"], (0, 0))
            rows.append(("offline" if c["status"] != "online" else "", [
                _text(c["name"]), _text(c["status"]), _text(c["nodes"]), _text(mism),
                _text(nonresp), _text(c["actions_in_flight"]), _text(c.get("running_ops")),
                tags.ul(class_="pservs")(pservs) if pservs else "none",
                f"{c.get('drifted_nodes', 0)} ({c.get('drift_policy', 'report')})"]))
        return [tags.h2("Clusters"), _table(
            ("cluster", "status", "nodes", "mismatched", "non-responsive", "actions in flight",
             "running ops", "pservs", "drifted (policy)"), rows, "no clusters yet")]

    def _live_activity(self, doc, now):
        """The "Running now" panel: per pserv and node, and the slot queue."""
        title = tags.h2("Running now")
        if doc.get("failed"):
            return [title, tags.p(class_="error")(
                "could not ask the pservs; the region log says why")]
        totals = doc.get("totals") or {}
        pservs = doc.get("pservs") or []
        more = "+" if any(len(p.get("nodes") or ()) > LIVE_NODES_SHOWN for p in pservs) else ""
        slot_waiting = sum((p.get("slots") or {}).get("waiting") or 0 for p in pservs)
        parts = [title, _note(
            ["what the registries of the connected pservs run and hold back at this moment "
             "(the journal's ", tags.em("running"), " only means dispatched)"],
            _plural(totals.get("pservs", 0), "pserv"),
            f"{totals.get('running', 0)}{more} running",
            f"{totals.get('waiting', 0)}{more} waiting",
            f"{totals.get('joined', 0)}{more} joined",
            f"{slot_waiting} waiting for a slot")]
        if not pservs:
            parts.append(tags.p(class_="empty")("no pserv connected to this region"))
        for p in pservs:
            parts.append(self._live_pserv(p, now))
        return parts

    @staticmethod
    def _live_action(a):
        if not a:
            return ""
        text = f"#{_text(a.get('operation_id'))} {_text(a.get('action'))}"
        return [text, " ", tags.em("stopping")] if a.get("stopping") else text

    @staticmethod
    def _age(age):
        return "" if age is None else f"{age:.1f} s"

    def _live_pserv(self, p, now):
        parts = [tags.h3(f"pserv {_text(p.get('pserv'))} ",
                         tags.span(class_="note")(f"cluster {_text(p.get('cluster'))}"))]
        if p.get("error"):
            parts.append(tags.p(class_="error")(
                f"no complete answer: {p['error']}"
                + (" (showing what came before)" if p.get("nodes") else "")))
        slots = p.get("slots")
        if slots and slots.get("size"):
            parts.append(tags.p(class_="note")(
                f"slots: {_text(slots.get('busy'))} of {_text(slots.get('size'))} busy, "
                f"{_text(slots.get('waiting'))} waiting for a slot"))
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
            joined_text = ", ".join(_text(j) for j in joined)
            if total > len(joined):
                joined_text += f" \N{HORIZONTAL ELLIPSIS} ({total} in all)"
            rows.append(("", [
                _text(n.get("node")), self._live_action(running), _when(lead.get("since"), now),
                self._age(lead.get("age")), _text(slot), joined_text,
                self._live_action(waiting), self._live_action(query)]))
        if len(nodes) > LIVE_NODES_SHOWN:
            parts.append(tags.p(class_="note")(
                f"showing the first {LIVE_NODES_SHOWN} busy nodes; ",
                tags.code("powerctl activity"), " or ", tags.code("GET /v1/activity"),
                " lists them all"))
        parts.append(_table(("node", "running", "since", "age", "slot", "joined", "waiting",
                             "query"), rows, "nothing runs or waits here"))
        queue = (slots or {}).get("queue") or []
        if queue:
            shown = queue[:LIVE_QUEUE_SHOWN]
            total = max(len(queue), slots.get("waiting") or 0)
            more = f" (the first {len(shown)} of {total})" if total > len(shown) else ""
            parts.append(tags.p(class_="note")(
                f"waiting for a slot, most urgent first{more}"))
            parts.append(_table(
                ("#", "node", "operation", "action", "priority", "waiting since", "age"),
                [("", [_text(w.get("position")), _text(w.get("node")),
                       _text(w.get("operation_id")), _text(w.get("action")),
                       _text(w.get("priority")), _when(w.get("since"), now),
                       self._age(w.get("age"))]) for w in shown]))
        return parts

    def _op_row(self, op, now, finished=False):
        cells = [_text(op["id"]), _text(op["node"]), _text(op["action"]), _text(op["state"]),
                 _text(op.get("pserv")), _text(op.get("requester")),
                 _when(op.get("requested_at"), now), _when(op.get("started_at"), now)]
        if finished:
            cells += [_when(op.get("finished_at"), now), _state(op.get("observed_state")),
                      _text(op.get("coalesced_into") or op.get("superseded_by")),
                      _text(op.get("error"))]
        return ("failed" if op["state"] == OpState.FAILED else "", cells,
                {"data-op": str(op["id"])})

    def _open_ops(self, ops, truncated, now):
        note = (tags.p(class_="note")(f"showing the newest {OPEN_OPS_SHOWN} of each state; "
                                      "there are more") if truncated else "")
        return [tags.h2("Operations in flight"), note, _table(
            ("id", "node", "action", "state", "pserv", "requester", "requested", "started"),
            [self._op_row(op, now) for op in ops], "nothing in flight", css="ops-open")]

    def _finished(self, ops, now):
        return [tags.h2(f"Last {RECENT_FINISHED} finished operations"), _table(
            ("id", "node", "action", "state", "pserv", "requester", "requested", "started",
             "finished", "observed", "joined / superseded by", "error"),
            [self._op_row(op, now, finished=True) for op in ops], "none yet",
            css="ops-finished")]

    @staticmethod
    def _limit(args):
        """Rows per page: ``limit`` when it is a sane number, else the default."""
        try:
            limit = int(args.get("limit", NODES_PER_PAGE))
        except ValueError:
            return NODES_PER_PAGE
        return min(max(limit, 1), NODES_PER_PAGE_MAX)

    def _filter_form(self, args, clusters, cluster, problems, name):
        """A plain GET form (no script): cluster, problems only, name contains."""
        choices = [tags.option(value="")("all clusters")]
        for c in sorted(c["name"] for c in clusters):
            option = tags.option(value=c)(c)
            if c == cluster:
                option(selected="selected")
            choices.append(option)
        problems_box = tags.input(type="checkbox", name="problems", value="1",
                                  id="filter-problems")
        if problems:
            problems_box(checked="checked")
        hidden = []
        if "limit" in args:
            hidden.append(tags.input(type="hidden", name="limit", value=args["limit"]))
        return tags.form(class_="filter", method="get", action="/", id="node-filter")(
            tags.label("cluster ", tags.select(name="cluster", id="filter-cluster")(choices)),
            tags.label(problems_box, " only problems"),
            tags.label("name contains ", tags.input(type="search", name="name", value=name,
                                                    id="filter-name")),
            hidden, tags.button(type="submit")("filter"))

    def _node_filter(self, args):
        """``(cluster, problems, name, after, limit)`` of the node table's parameters."""
        return (args.get("cluster") or None,
                args.get("problems") in ("1", "yes", "true", "on"),
                args.get("name", ""), args.get("after", ""), self._limit(args))

    def _nodes(self, args, clusters, node_page, now):
        cluster, problems, name, after, _ = self._node_filter(args)
        shown, more = node_page["nodes"], node_page["more"]
        total, before = node_page["total"], node_page["before"]
        rows = []
        for n in shown:
            css = " ".join(c for c, on in (("mismatch", mismatched(n)), ("drift", drifted(n)),
                                            ("nonresponsive", not n["responsive"])) if on)
            rows.append((css, [
                _text(n["name"]), _text(n["cluster"]), _state(n["desired_state"]),
                _state(n["power_state"]),
                "yes" if n["responsive"] else tags.strong("no"),
                _text(n["last_error"]), _when(n.get("last_changed_at"), now),
                _when(n.get("last_queried_at"), now),
                [tags.strong("drifted"), ": ", _state(n.get("drift_observed")), " since ",
                 _when(n["drift_since"], now), f" ({_text(n.get('drift_polls'))} polls)"]
                if drifted(n) else ""], {"data-node": n["name"]}))
        query = {k: v for k, v in args.items() if k in PAGE_ARGS and k != "after"}
        links = []
        if after:
            links.append(tags.a(href="/?" + urlencode(query), id="page-first")("first page"))
        if more:
            links.append(tags.a(href="/?" + urlencode({**query, "after": shown[-1]["name"]}),
                                id="page-next")("next page"))
        position = (f"{before + 1}\N{EN DASH}{before + len(shown)} of "
                    if shown and (after or more) else "")
        title = "Nodes" + (f" of cluster {cluster}" if cluster else "") \
            + (" needing attention" if problems else "") \
            + (f" named *{name}*" if name else "")
        return [
            tags.h2(title),
            self._filter_form(args, clusters, cluster, problems, name),
            _note(f"{position}{_plural(total, 'node')}",
                  "mismatched (desired \N{NOT EQUAL TO} current) and drifted (changed "
                  "behind powerctl's back) rows are highlighted", *links),
            _table(("node", "cluster", "desired", "current", "responsive", "last error",
                    "last changed", "last queried", "drift"), rows, "no nodes", css="nodes")]


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
    """
    ``GET /metrics``: the fleet as Prometheus gauges.  ``auto_fence``: a
    callable answering :meth:`AutoFencer.stats
    <powerctl.region.autofencer.AutoFencer.stats>` (what automatic fencing
    did; only the leader region fences, so only its figures move).
    """

    def __init__(self, store, activity=None, log=None, auto_fence=None):
        super().__init__(store, activity, log)
        self.auto_fence = auto_fence

    async def produce(self, request):
        # one statement: a GROUP BY of the nodes, never every row (issue 14)
        fleet = await self.store.nodes.fleet(self.store.clusters.heartbeat_timeout)
        clusters = _clusters_with_activity(
            fleet["clusters"], await _activity(self.activity, self.log))
        groups, counts = fleet["counts"], fleet["ops"]

        names = sorted({c["name"] for c in clusters} | {g["cluster"] for g in groups})
        by_state = {(c, s): 0 for c in names for s in POWER_STATES}
        mism = dict.fromkeys(names, 0)
        nonresp = dict.fromkeys(names, 0)
        drift = dict.fromkeys(names, 0)
        for g in groups:
            key = (g["cluster"], g["power_state"])
            by_state[key] = by_state.get(key, 0) + g["nodes"]
            mism[g["cluster"]] += g["mismatched"]
            nonresp[g["cluster"]] += g["nonresponsive"]
            drift[g["cluster"]] += g["drifted"]
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
        if self.auto_fence is not None:
            self._auto_fence_families(out, sorted(self.auto_fence().items()))
        return METRICS_CONTENT_TYPE, out.text().encode("utf-8")

    @staticmethod
    def _auto_fence_families(out, fencing):
        for name, field, kind, text in (
                ("powerctl_auto_fence_storm", "storm", "gauge",
                 "1 while automatic fencing is held back: too many of the cluster's nodes "
                 "became non-responsive at once."),
                ("powerctl_auto_fence_storms_total", "storms", "counter",
                 "Storms that held automatic fencing back."),
                ("powerctl_auto_fences_total", "fences", "counter",
                 "Automatic fences requested."),
                ("powerctl_auto_fence_throttled_total", "throttled", "counter",
                 "Automatic fences held back by the per-window limit (per round)."),
                ("powerctl_auto_fence_soft_steps_total", "soft_steps", "counter",
                 "Soft steps (webhooks) sent before fencing.")):
            out.family(name, kind, text,
                       [({"cluster": c}, int(getattr(st, field))) for c, st in fencing])


def add_to(root, store, activity=None, log=None, live_activity=None, events=None,
           auto_fence=None):
    """
    Put the status page at ``/`` and the metrics at ``/metrics`` on ``root``;
    with ``events`` (a :class:`powerctl.region.events.EventStream`), the
    page's live stream at ``/events``; ``auto_fence``: see :class:`Metrics`.
    """
    if events is not None:
        root.putChild(b"events", events.resource())
    root.putChild(b"", StatusPage(store, activity=activity, log=log,
                                  live_activity=live_activity, live_events=events is not None))
    root.putChild(b"metrics", Metrics(store, activity=activity, log=log,
                                      auto_fence=auto_fence))
    return root

