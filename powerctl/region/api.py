"""
The region's REST API: JSON under ``/v1``, on twisted.web.

Mount it with::

    root = resource.Resource()
    root.putChild(b"v1", Api(store, catalogue, activity=..., on_power_request=...))
    site = server.Site(root)

or use :func:`api_root` for a root holding only the API.  One routing table
(:meth:`Api.routes`) maps path patterns and methods to small handlers; each
handler is a coroutine returning ``(status, body)``.  Every error is JSON,
``{"error": {"code": ..., "message": ...}}``: 400 for bad input, 404 for an
unknown node, operation or pod manager, 409 for a duplicate or a pod manager
in use, 405, 413, 415.  A NUL character in a path segment, a query
parameter or any JSON string, a body that is not UTF-8 and a body nested
deeper than :data:`MAX_DEPTH` levels are 400s too.  Input is checked (and
the store checks it again inside its transaction) before anything is
written.  An unexpected exception answers 500 with an error id; the same
id is logged through twisted.logger with the traceback, never sent to the
client (:class:`powerctl.region.resource.AsyncResource`).

Passwords never leave: node power documents are redacted (secrets show as
``"(set)"``), pod managers show ``password_set``, and database errors are
logged without their DETAIL line (which can quote a row, password included).

Why one module of this size: the routing table and its small handlers
belong together (a route is read next to what answers it); the shared
machinery is elsewhere (:mod:`powerctl.region.resource`,
:mod:`powerctl.region.guard`, :mod:`powerctl.region.openapi`).
"""

import inspect
import json
import re
from urllib.parse import unquote

from twisted.internet import defer
from twisted.web import resource

from powerctl.power import OP_STATES, POWER_STATES, TARGET_STATES, TERMINAL_STATES, Action
from powerctl.powerdoc import redact
from powerctl.region import auth, bulk, drift, fencing, openapi, paging, powerconfig
from powerctl.region.autofence import FIELDS as AUTO_FENCE_FIELDS
from powerctl.region.errors import Conflict, InvalidInput, NotFound, Unavailable
from powerctl.region.resource import AsyncResource, loggable

MAX_BODY = 1024 * 1024
#: Deepest nesting of arrays and objects a request body may have.
MAX_DEPTH = 64
#: What no text stored or looked up may hold: PostgreSQL refuses NUL, and
#: an unpaired surrogate cannot be encoded as UTF-8.
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
NODE_FIELDS = ("name", "cluster", "power", "desired_state", "power_state", "responsive",
               "last_error", "last_queried_at", "last_changed_at", "created_at", "updated_at",
               "drift", "circuit")
OP_FIELDS = ("id", "node", "action", "state", "coalesced_into", "superseded_by", "error",
             "requested_at", "started_at", "finished_at", "pserv", "agent", "requester",
             "observed_state", "cancelled_by", "confirmed_by", "detail")
POD_MANAGER_FIELDS = ("uuid", "name", "driver", "username", "password_set", "url", "status",
                      "description", "created_at", "updated_at")
#: The Content-Type of every JSON answer, as twisted.web stores a header's values.
_JSON_TYPE = (b"application/json",)
_STATUS = {NotFound: 404, Conflict: 409, InvalidInput: 400, Unavailable: 503}


class HttpError(Exception):
    """
    The REST API refusing a request: answered with ``status`` and
    ``{"error": {"code", "message"}}``.  (The CLI's ``ApiError`` is the client
    receiving such an answer.)
    """

    def __init__(self, status, code, message, headers=()):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = tuple(headers)


def error_body(code, message, **extra):
    """The JSON body of every error answer."""
    return {"error": dict(code=code, message=message, **extra)}


def _segments(request):
    """
    The path below the API's mount point, percent-decoded, without a
    trailing '/'; a segment that is not UTF-8 or holds a NUL (which
    PostgreSQL refuses) is a 400.
    """
    try:
        parts = [unquote(p.decode("utf-8"), errors="strict") for p in request.postpath]
    except UnicodeDecodeError:
        raise HttpError(400, "invalid_input", "the path is not valid UTF-8") from None
    for position, part in enumerate(parts):
        if _BAD_TEXT.search(part):
            raise HttpError(400, "invalid_input", f"path segment {position + 1} ({part[:60]!r}): "
                           "must not contain a NUL character or an unpaired surrogate")
    if parts and parts[-1] == "":
        parts.pop()
    return parts


def _match(pattern, parts):
    """Path parameters if ``parts`` fits ``pattern`` ('nodes/{name}'), else None."""
    return _match_names(pattern.split("/"), parts)


def _match_names(names, parts):
    """:func:`_match` with the pattern already split."""
    if len(names) != len(parts):
        return None
    params = {}
    for name, part in zip(names, parts):
        if name.startswith("{"):
            if not part:
                return None
            params[name[1:-1]] = part
        elif name != part:
            return None
    return params


def _too_deep():
    return HttpError(400, "too_deep", f"the request body nests deeper than {MAX_DEPTH} levels")


def _check_document(document):
    """
    Refuse (400) a parsed JSON document nested deeper than :data:`MAX_DEPTH`,
    or with a NUL character or an unpaired surrogate in any key or string
    (PostgreSQL cannot store them): walked without recursion, naming the field.
    """
    stack = [(document, "", 1)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            if _BAD_TEXT.search(value):
                raise HttpError(400, "invalid_input", f"{where or 'the body'}: must not "
                               "contain a NUL character or an unpaired surrogate")
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth > MAX_DEPTH:
            raise _too_deep()
        if isinstance(value, dict):
            for key, item in value.items():
                name = f"{where}.{key}" if where else key
                if _BAD_TEXT.search(key):
                    raise HttpError(400, "invalid_input", f"{name!r}: a field name must not "
                                   "contain a NUL character or an unpaired surrogate")
                stack.append((item, name, depth + 1))
        else:
            stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))


def _json_body(request, allowed, required=()):
    """
    The request's JSON object, refused (400/413/415) unless it is UTF-8
    JSON, an object, within :data:`MAX_BODY`, nested at most
    :data:`MAX_DEPTH` levels, without NUL characters (or unpaired
    surrogates) in any string, with no field outside ``allowed`` and every
    field of ``required``.
    """
    ctype = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise HttpError(415, "unsupported_media_type",
                       "the request body must be JSON (Content-Type: application/json)")
    raw = request.content.read(MAX_BODY + 1) if request.content else b""
    if len(raw) > MAX_BODY:
        raise HttpError(413, "too_large", f"the request body exceeds {MAX_BODY} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HttpError(400, "malformed_json",
                       f"the request body is not valid UTF-8: {e}") from None
    try:
        body = json.loads(text)
    except RecursionError:
        raise _too_deep() from None
    except ValueError as e:
        raise HttpError(400, "malformed_json", f"the request body is not valid JSON: {e}") from None
    _check_document(body)
    if not isinstance(body, dict):
        raise HttpError(400, "invalid_input", "the request body must be a JSON object")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise HttpError(400, "unknown_field", f"unknown or read-only field {unknown[0]!r}; "
                       f"accepted: {', '.join(allowed)}")
    missing = [f for f in required if f not in body]
    if missing:
        raise HttpError(400, "missing_field", f"field {missing[0]!r} is required")
    return body


def _query(request, allowed):
    """Query parameters as text, refusing unknown or repeated ones."""
    args = {}
    for key, values in request.args.items():
        name = key.decode("utf-8", "replace")
        if name not in allowed:
            raise HttpError(400, "unknown_parameter", f"unknown query parameter {name!r}; "
                           f"accepted: {', '.join(allowed) or 'none'}")
        if len(values) != 1:
            raise HttpError(400, "invalid_input", f"query parameter {name!r} given twice")
        try:
            value = values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise HttpError(400, "invalid_input",
                           f"query parameter {name!r}: not valid UTF-8") from None
        if _BAD_TEXT.search(value):
            raise HttpError(400, "invalid_input", f"query parameter {name!r}: must not "
                           "contain a NUL character")
        args[name] = value
    return args


def _int_arg(args, name):
    """An optional integer query parameter."""
    if name not in args:
        return None
    try:
        return int(args[name])
    except ValueError:
        raise HttpError(400, "invalid_input", f"{name}: must be an integer") from None


def _page_args(args, kind, key_type):
    """
    ``(limit, after key or None)`` of a list request (:mod:`powerctl.region.paging`):
    400 naming ``limit`` or ``after`` when one is not what the list takes.
    """
    try:
        limit = paging.limit_of(args.get("limit"))
    except ValueError as e:
        raise HttpError(400, "invalid_input", str(e)) from None
    if "after" not in args:
        return limit, None
    try:
        return limit, paging.decode(kind, args["after"], key_type)
    except paging.BadCursor as e:
        raise HttpError(400, "invalid_cursor", str(e)) from None


def paged(request, args, rows, limit, kind, key):
    """
    The page of ``rows`` (read with ``limit + 1``) to answer; when another
    page follows, a ``Link: <...>; rel="next"`` header says where.
    """
    page, cursor = paging.split(rows, limit, kind, key)
    if cursor is not None:
        request.setHeader("Link", paging.link(request.path.decode("utf-8", "replace"),
                                              args, cursor))
    return page


def _choice(args, name, allowed):
    """An optional query parameter that must be one of ``allowed``."""
    value = args.get(name)
    if value is not None and value not in allowed:
        raise HttpError(400, "invalid_input",
                       f"{name}: {value!r} is not one of {', '.join(allowed)}")
    return value


def scope_of(request):
    """The clusters the caller's token is confined to (a sorted list), or None: all."""
    principal = auth.principal_of(request)
    if principal is None or principal.clusters is None:
        return None
    return sorted(principal.clusters)


#: A field the body left out (``None`` is an explicit JSON null, refused).
_ABSENT = object()


def _requester(request, given):
    """
    Who asks: the name of the API token the guard admitted (issue 10; a
    ``requester`` the client names is ignored then), else the ``requester``
    the client names, else its address.
    """
    if given is _ABSENT:
        given = None
    elif not isinstance(given, str) or len(given) > 255:
        raise HttpError(400, "invalid_input", "requester: must be a string of at most 255 "
                       "characters")
    principal = auth.principal_of(request)
    if principal is not None:
        return principal.name
    if given is None or given == "":
        return f"api:{request.getClientAddress().host}"
    return given


def _has_body(request):
    """Whether the request carries a body (an empty POST is allowed for cancel)."""
    if request.content is None:
        return False
    position = request.content.tell()
    data = request.content.read(1)
    request.content.seek(position)
    return bool(data)


def _pick(row, fields):
    return {f: row.get(f) for f in fields}


class Api(AsyncResource):
    """
    The ``/v1`` resource.

    :param store: a :class:`powerctl.region.store.Store`.
    :param catalogue: the DriverCatalogue (to redact secrets).
    :param activity: optional callable returning (or firing with) a mapping
        of cluster name to actions in flight, as this region sees them now;
        it overrides the pservs' last heartbeat in ``GET /v1/clusters``.
    :param on_power_request: optional callable given each new operation
        once its transaction committed (the region dispatches it); its
        failures are logged, never answered.
    :param region: optional :class:`powerctl.region.core.Region`: node
        deletes and changes go through it (its pservs stop driving the node
        first), and operator cancel and confirm need it (503 without).
    :param log: a twisted.logger ``Logger`` (tests pass their own).
    :param guard: a :class:`powerctl.region.guard.ApiGuard` (required): every
        request goes through it -- token, role, cluster scope, audit -- and
        it adds the ``tokens`` and ``audit`` routes.
    """

    kind = "API"

    def __init__(self, store, catalogue, activity=None, on_power_request=None, log=None,
                 region=None, live_activity=None, events=None, *, guard,
                 bulk_share=bulk.DEFAULT_SHARE):
        super().__init__(log)
        self.guard = guard  # authentication, roles, audit (powerctl.region.guard)
        self.store = store
        self.region = region
        self.catalogue = catalogue
        self.activity = activity
        self.live_activity = live_activity  # (node=, cluster=) -> what the pservs run now
        self.on_power_request = on_power_request
        self.bulk_share = bulk.check_share(bulk_share)  # the blast-radius guard
        self.events = events  # GET /v1/events: a powerctl.region.events.EventStream
        self._routes = self.routes()
        # The routes by their number of segments, in table order (the first
        # that fits wins, as in the table), patterns split once.
        self._by_length = {}
        for pattern, methods in self._routes:
            names = pattern.split("/")
            self._by_length.setdefault(len(names), []).append((names, methods))

    def routes(self):
        """The routing table: (path pattern below /v1, {method: handler})."""
        return (
            ("nodes", {"GET": self.list_nodes, "POST": self.create_node}),
            ("nodes/{name}", {"GET": self.get_node, "PUT": self.update_node,
                              "DELETE": self.delete_node}),
            ("nodes/{name}/power", {"POST": self.request_power}),
            ("power", {"POST": self.bulk_power}),
            ("power_ops", {"GET": self.list_ops}),
            ("power_ops/{op_id}", {"GET": self.get_op}),
            ("power_ops/{op_id}/cancel", {"POST": self.cancel_op}),
            ("power_ops/{op_id}/confirm", {"POST": self.confirm_op}),
            ("pod_managers", {"GET": self.list_pod_managers, "POST": self.create_pod_manager}),
            ("pod_manager/{uuid}", {"GET": self.get_pod_manager, "PUT": self.update_pod_manager,
                                    "DELETE": self.delete_pod_manager}),
            ("clusters", {"GET": self.list_clusters}),
            ("clusters/{name}", {"PUT": self.update_cluster}),
            ("clusters/{name}/circuits", {"GET": self.list_circuits}),
            ("clusters/{name}/circuits/{circuit}", {"PUT": self.set_circuit,
                                                    "DELETE": self.delete_circuit}),
            ("clusters/{name}/auto-fence", {"GET": self.get_auto_fence,
                                            "PUT": self.set_auto_fence,
                                            "DELETE": self.delete_auto_fence}),
            ("activity", {"GET": self.get_activity}),
            ("lockouts", {"GET": self.list_lockouts}),
            ("lockouts/{name}", {"DELETE": self.clear_lockout}),
            ("openapi.json", {"GET": self.openapi}),
        ) + tuple(self.guard.routes()) + (tuple(self.events.routes()) if self.events else ())

    # -- plumbing -------------------------------------------------------

    def _resolve(self, request):
        """(handler, path parameters) for the request, or a 404/405 HttpError."""
        parts = _segments(request)
        method = request.method.decode("ascii", "replace")
        method = "GET" if method == "HEAD" else method
        for names, methods in self._by_length.get(len(parts), ()):
            params = _match_names(names, parts)
            if params is None:
                continue
            if method not in methods:
                allow = ", ".join(sorted(methods))
                raise HttpError(405, "method_not_allowed",
                               f"{method} is not allowed here; allowed: {allow}",
                               headers=[("Allow", allow)])
            return methods[method], params
        raise HttpError(404, "not_found", f"no such resource: /v1/{'/'.join(parts)}")

    async def answer(self, request):
        """``(status, body, headers)``: a handler's, or the error it raised (a bug: 500)."""
        try:
            handler, params = self._resolve(request)
            status, body = await self.guard.call(request, handler, params)  # issue 10
            return status, body, ()
        except HttpError as e:
            return e.status, error_body(e.code, e.message), e.headers
        except (NotFound, Conflict, InvalidInput, Unavailable) as e:
            status = next(s for cls, s in _STATUS.items() if isinstance(e, cls))
            return status, error_body(e.code, e.message), ()

    def internal_error(self, request, error_id):
        body = error_body("internal", "internal error; the region log has the details "
                          f"under error id {error_id}", id=error_id)
        return 500, body, ()

    def write(self, request, answer):
        status, body, headers = answer
        if hasattr(body, "start"):  # a stream (powerctl.region.events.Streaming)
            body.start()
            return
        request.setResponseCode(status)
        for name, value in headers:
            request.setHeader(name, value)
        if body is not None:
            data = (body.encoded() if isinstance(body, paging.EncodedPage)
                    else json.dumps(body).encode("utf-8") + b"\n")
            # With its length known, the answer goes out in one piece
            # rather than chunked (fewer writes for the region and less
            # parsing for the client).
            request.responseHeaders.setRawHeaders(b"content-type", _JSON_TYPE)
            request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(data)])
            request.write(data)
        request.finish()

    # -- views ----------------------------------------------------------

    def _node(self, row, bounds=True, secrets=None):
        """
        A node as the API shows it: power redacted; with ``bounds``, the
        derived time bounds of its actions (left out of lists: they cost
        about 40 us a node, and a list is for the fleet, not one node).
        ``secrets``: the catalogue's secret names, worked out once per list.
        """
        shown = _pick(row, NODE_FIELDS)
        shown["power"] = redact(row["power"], secrets or powerconfig.secret_names(self.catalogue))
        shown["drift"] = drift.as_json(row.get("drift_since"), row.get("drift_observed"),
                                       row.get("desired_state"), row.get("drift_polls"))
        if bounds:
            shown["bounds"] = fencing.node_bounds(row["power"], self.catalogue)
        return shown

    # -- nodes ----------------------------------------------------------

    async def list_nodes(self, request):
        """
        A page of nodes by name, filtered in SQL (a scoped token's clusters
        too), as PostgreSQL writes it: the rows as :meth:`_node` shows them
        (no bounds), power documents redacted in the same statement
        (:mod:`powerctl.region.store.node_page`, issue 14: Python's
        dicts, redaction and JSON encoding were most of a page's time).
        """
        args = _query(request, ("cluster", "power_state", "desired_state", "responsive",
                                "limit", "after"))
        limit, after = _page_args(args, "nodes", str)
        responsive = _choice(args, "responsive", ("true", "false"))
        text, more, last, clusters = await self.store.nodes.page(
            powerconfig.secret_names(self.catalogue), after_name=after or "", limit=limit,
            cluster=args.get("cluster"), clusters=scope_of(request),
            power_state=_choice(args, "power_state", POWER_STATES),
            desired_state=_choice(args, "desired_state", TARGET_STATES),
            responsive=None if responsive is None else responsive == "true")
        if more:
            request.setHeader("Link", paging.link(request.path.decode("utf-8", "replace"),
                                                  args, paging.encode("nodes", last)))
        return 200, paging.EncodedPage(text, clusters)

    async def create_node(self, request):
        body = _json_body(request, ("name", "cluster", "power", "circuit"),
                          ("name", "cluster", "power"))
        row = await self.store.nodes.create(body["name"], body["cluster"], body["power"],
                                            circuit=body.get("circuit"))
        if self.region is not None:  # a pserv of its cluster owns it from now on
            await self.region.assign(row["cluster"])
        request.setHeader("Location", f"/v1/nodes/{row['name']}")
        return 201, self._node(row)

    async def get_node(self, request, name):
        return 200, self._node(await self.store.nodes.get(name))

    async def update_node(self, request, name):
        body = _json_body(request, ("name", "cluster", "power", "circuit", "requester"))
        if body.pop("name", name) != name:
            raise HttpError(400, "invalid_input", "name: nodes cannot be renamed")
        by = _requester(request, body.pop("requester", _ABSENT))
        if self.region is None:
            row = await self.store.nodes.update(name, **body)
            row.pop("changed_for_pserv", None)
        else:
            row = await self.region.update_node(name, by, **body)
        return 200, self._node(row)

    async def delete_node(self, request, name):
        args = _query(request, ("requester",))
        by = _requester(request, args.get("requester", _ABSENT))
        if self.region is None:
            await self.store.nodes.delete(name, by=by)
        else:
            await self.region.delete_node(name, by)
        return 204, None

    async def request_power(self, request, name):
        body = _json_body(request, ("action", "requester"), ("action",))
        try:
            action = Action.parse(body["action"])
        except ValueError as e:
            raise HttpError(400, "invalid_action", str(e)) from None
        requester = _requester(request, body.get("requester", _ABSENT))
        # issue 14: one statement journals it and says who runs it
        op, serving = await self.store.ops.request_serving(
            name, action.value, requester=requester,
            live_within=self.store.clusters.heartbeat_timeout)
        if op["state"] not in TERMINAL_STATES:  # a fence that joined a recent one has ended
            self._dispatch(op)
        request.setHeader("Location", f"/v1/power_ops/{op['id']}")
        if serving is None:  # a fence: its own transaction, so read after it
            serving = await self.store.clusters.serving(name)
        return 202, dict(_pick(op, OP_FIELDS), **self._who_runs(serving))

    @staticmethod
    def _who_runs(serving):
        """
        ``live_pserv`` (and, when false, a ``warning``) for a power request's
        answer: without a live pserv in the node's cluster the request is
        journalled but nothing runs it, and a client waiting for it should
        be told rather than left to time out.  ``serving`` is the node's
        ``(cluster, live pservs)``, from the pservs' heartbeats (every
        region's, not only this one's connections), read with the request.
        """
        if serving is None:  # deleted since: its operation ends cancelled anyway
            return {}
        cluster, live = serving
        if live:
            return {"live_pserv": True}
        return {"live_pserv": False,
                "warning": f"no live pserv serves cluster {cluster}: the request is "
                           "recorded but nothing runs it until one connects"}

    async def bulk_power(self, request):
        """
        ``{"action", "nodes": [...] | "cluster", "confirm", "dry_run"}``: one
        operation per node, journalled in one transaction
        (:mod:`powerctl.region.bulk`); 409 past the blast-radius guard
        without ``confirm``; ``dry_run`` answers the plan and writes nothing.
        """
        body = _json_body(request, ("action", "nodes", "cluster", "confirm", "dry_run",
                                    "requester"), ("action",))
        try:
            action = Action.parse(body["action"])
        except ValueError as e:
            raise HttpError(400, "invalid_action", str(e)) from None
        if ("nodes" in body) == ("cluster" in body):
            raise HttpError(400, "invalid_input", "nodes, cluster: give exactly one of them "
                           "(nodes carry no tags to select by)")
        nodes = body.get("nodes")
        if nodes is not None:
            if (not isinstance(nodes, list) or not 1 <= len(nodes) <= bulk.MAX_NODES
                    or not all(isinstance(n, str) for n in nodes)):
                raise HttpError(400, "invalid_input", "nodes: must be a list of 1 to "
                               f"{bulk.MAX_NODES} node names")
            if len(set(nodes)) != len(nodes):
                duplicate = next(n for i, n in enumerate(nodes) if n in nodes[:i])
                raise HttpError(400, "invalid_input", f"nodes: {duplicate!r} is named twice")
        if "cluster" in body and not isinstance(body["cluster"], str):
            raise HttpError(400, "invalid_input", "cluster: must be a cluster name")
        flags = {}
        for flag in ("confirm", "dry_run"):
            flags[flag] = body.get(flag, False)
            if not isinstance(flags[flag], bool):
                raise HttpError(400, "invalid_input", f"{flag}: must be true or false")
        plan, ops = await self.store.ops.request_many(
            action.value, nodes=nodes, cluster=body.get("cluster"),
            requester=_requester(request, body.get("requester", _ABSENT)),
            share=self.bulk_share, **flags)
        if flags["dry_run"]:
            return 200, dict(plan.as_json(), dry_run=True)
        many = getattr(self.region, "dispatch_many_later", None)
        if many is not None and self.on_power_request == self.region.dispatch_later:
            many(ops)  # issue 14: one batch (reads, a call per page, a write per page)
        else:
            for op in ops:
                self._dispatch(op)
        return 202, {"action": action.value, "count": len(ops), "ids": [o["id"] for o in ops],
                     "operations": [_pick(o, ("id", "node", "action", "state")) for o in ops]}

    def _dispatch(self, op):
        """Hand a committed operation to the region's hook, without waiting."""
        if self.on_power_request is None:
            return
        try:
            d = self.on_power_request(op)
        except Exception:
            d = defer.fail()
        if isinstance(d, defer.Deferred) or inspect.iscoroutine(d):  # else: done, no Deferred
            defer.ensureDeferred(d).addErrback(lambda f: self.log.failure(
                "dispatching power operation {op_id} failed", loggable(f), op_id=op["id"]))

    # -- the journal ----------------------------------------------------

    async def list_ops(self, request):
        """
        A page of the journal, newest first (``after``: the cursor of a
        ``Link`` header; ``before``: an operation id, as before cursors).
        """
        args = _query(request, ("node", "state", "cluster", "limit", "after", "before"))
        _choice(args, "state", OP_STATES)
        limit, after = _page_args(args, "power_ops", int)
        before = _int_arg(args, "before")
        if after is not None and before is not None:
            raise HttpError(400, "invalid_input", "before: give either after or before")
        try:
            rows = await self.store.ops.list(
                node=args.get("node"), state=args.get("state"), cluster=args.get("cluster"),
                clusters=scope_of(request), limit=limit + 1,
                before_id=after if after is not None else before)
        except NotFound:
            raise HttpError(400, "invalid_input", "before: must be an operation id") from None
        rows = paged(request, args, rows, limit, "power_ops", lambda r: r["id"])
        return 200, [_pick(r, OP_FIELDS) for r in rows]

    async def get_op(self, request, op_id):
        return 200, _pick(await self.store.ops.get(op_id), OP_FIELDS)

    def _operator(self):
        if self.region is None:
            raise HttpError(503, "unavailable", "this API has no region to reach pservs through")
        return self.region

    async def cancel_op(self, request, op_id):
        """Cancel through the registry: answered once the device is quiet."""
        body = _json_body(request, ("requester", "force")) if _has_body(request) else {}
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise HttpError(400, "invalid_input", "force: must be true or false")
        op = await self._operator().cancel_op(
            op_id, _requester(request, body.get("requester", _ABSENT)), force=force)
        return 200, _pick(op, OP_FIELDS)

    async def confirm_op(self, request, op_id):
        """An operator saw a manual action done: the node is now ``state``."""
        body = _json_body(request, ("state", "requester"), ("state",))
        if body["state"] not in TARGET_STATES:
            raise HttpError(400, "invalid_input", f"state: must be on or off, not "
                           f"{body['state']!r}")
        op = await self._operator().confirm_op(
            op_id, body["state"], _requester(request, body.get("requester", _ABSENT)))
        return 202, _pick(op, OP_FIELDS)

    # -- pod managers ---------------------------------------------------

    async def list_pod_managers(self, request):
        args = _query(request, ("limit", "after"))
        limit, after = _page_args(args, "pod_managers", str)
        rows = await self.store.pod_managers.list(after_name=after or "", limit=limit + 1)
        rows = paged(request, args, rows, limit, "pod_managers", lambda r: r["name"])
        return 200, [_pick(r, POD_MANAGER_FIELDS) for r in rows]

    async def create_pod_manager(self, request):
        body = _json_body(request, ("name", "url", "username", "password", "description",
                                    "driver"), ("name", "url"))
        row = await self.store.pod_managers.create(
            body["name"], body["url"], body.get("username", ""), body.get("password", ""),
            body.get("description", ""), driver=body.get("driver", "redfish"))
        request.setHeader("Location", f"/v1/pod_manager/{row['uuid']}")
        return 201, _pick(row, POD_MANAGER_FIELDS)

    async def get_pod_manager(self, request, uuid):
        return 200, _pick(await self.store.pod_managers.get(uuid), POD_MANAGER_FIELDS)

    async def update_pod_manager(self, request, uuid):
        body = _json_body(request, ("name", "url", "username", "password", "description"))
        return 200, _pick(await self.store.pod_managers.update(uuid, **body), POD_MANAGER_FIELDS)

    async def delete_pod_manager(self, request, uuid):
        await self.store.pod_managers.delete(uuid)
        return 204, None

    # -- BMC lock-outs (issue 10) ----------------------------------------

    async def list_lockouts(self, request):
        """Nodes whose BMC credentials are locked out (``?cluster=``)."""
        args = _query(request, ("cluster",))
        principal = auth.principal_of(request)
        return 200, await self.store.lockouts.list(
            cluster=args.get("cluster"),
            clusters=principal.clusters if principal is not None else None)

    async def clear_lockout(self, request, name):
        """An operator clears a node's lock-out: its pserv tries its credentials again."""
        _query(request, ())
        if self.region is None:
            cleared = (await self.store.lockouts.clear(name))["cleared"]
        else:
            cleared = await self.region.clear_lockout(name)
        return 200, {"node": name, "cleared": cleared}

    # -- clusters and the document -------------------------------------

    async def list_clusters(self, request):
        _query(request, ())
        clusters = await self.store.clusters.list()
        live = await self._activity()
        for cluster in clusters:
            if cluster["name"] in live:
                cluster["actions_in_flight"] = live[cluster["name"]]
        return 200, clusters

    async def update_cluster(self, request, name):
        """``{"drift_policy": "report"|"enforce"}``: what the cluster does about drift."""
        body = _json_body(request, ("drift_policy",), ("drift_policy",))
        if body["drift_policy"] not in drift.POLICIES:
            raise HttpError(400, "invalid_input", f"drift_policy: must be one of "
                           f"{', '.join(drift.POLICIES)}, not {body['drift_policy']!r}")
        await self.store.clusters.set_policy(name, body["drift_policy"])
        [cluster] = [c for c in await self.store.clusters.list() if c["name"] == name]
        live = await self._activity()
        if name in live:
            cluster["actions_in_flight"] = live[name]
        return 200, cluster

    async def list_circuits(self, request, name):
        """The cluster's circuits: budgets set and circuits its nodes name."""
        _query(request, ())
        if not any(c["name"] == name for c in await self.store.clusters.list()):
            raise HttpError(404, "not_found", f"cluster {name!r} does not exist")
        return 200, await self.store.clusters.circuits(name)

    async def set_circuit(self, request, name, circuit):
        """
        ``{"max_on": N, "spacing": S}``: at most N power-ons at once on the
        circuit, starts S seconds apart (default 0).  The pserv owning the
        circuit's nodes takes it with the next power command or ``Recover``.
        """
        body = _json_body(request, ("max_on", "spacing"), ("max_on",))
        row = await self.store.clusters.set_circuit(name, circuit, body["max_on"],
                                                    body.get("spacing", 0.0))
        return 200, row

    async def delete_circuit(self, request, name, circuit):
        """Remove a circuit's budget (its nodes keep naming it; no budget then)."""
        await self.store.clusters.delete_circuit(name, circuit)
        return 204, None

    async def get_auto_fence(self, request, name):
        """The cluster's automatic fencing policy (``enabled: false`` when none is set)."""
        _query(request, ())
        return 200, (await self.store.auto_fence.policy(name)).to_dict()

    async def set_auto_fence(self, request, name):
        """
        Set the cluster's automatic fencing policy (issue 13; see
        :mod:`powerctl.region.autofence`): ``enabled``, ``grace``,
        ``window``, ``storm_share``, ``max_per_window``, ``soft_url``,
        ``soft_timeout``; unset ones take their defaults.
        """
        body = _json_body(request, AUTO_FENCE_FIELDS)  # the policy checks each value
        return 200, (await self.store.auto_fence.set_policy(name, body)).to_dict()

    async def delete_auto_fence(self, request, name):
        """Turn the cluster's automatic fencing off (its policy is forgotten)."""
        await self.store.auto_fence.set_policy(name, None)
        return 204, None

    async def _activity(self):
        """This region's view of actions in flight; {} if it cannot say."""
        if self.activity is None:
            return {}
        try:
            return dict(await defer.maybeDeferred(self.activity))
        except Exception:
            self.log.failure("the activity callable failed; showing heartbeat counts")
            return {}

    async def get_activity(self, request):
        """What the pservs run now (:mod:`powerctl.region.activity`); ``?node=`` for one."""
        args = _query(request, ("node",))
        if self.live_activity is None:
            raise HttpError(503, "unavailable", "this region cannot ask its pservs what they run")
        node = args.get("node") or None
        cluster = (await self.store.nodes.get(node))["cluster"] if node else None
        return 200, await defer.maybeDeferred(self.live_activity, node=node, cluster=cluster)

    async def openapi(self, request):
        return 200, openapi.document()


class _JsonNotFound(resource.Resource):
    """404 in the API's JSON error shape, for paths outside ``/v1``."""

    isLeaf = True

    def render(self, request):
        request.setResponseCode(404)
        request.setHeader("Content-Type", "application/json")
        path = request.path.decode("utf-8", "replace")
        return json.dumps(error_body("not_found", f"no such resource: {path}")).encode() + b"\n"


class _Root(resource.Resource):
    """A root whose unknown children answer a JSON 404."""

    def getChild(self, path, request):
        return _JsonNotFound()


def api_root(store, catalogue, **kwargs):
    """A root resource holding only the API under ``/v1`` (``Api`` kwargs pass through)."""
    root = _Root()
    root.putChild(b"v1", Api(store, catalogue, **kwargs))
    return root
