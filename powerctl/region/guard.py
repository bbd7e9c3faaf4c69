"""
The REST API's door: authentication, roles and cluster scopes, the audit
trail, and the token routes (``/v1/tokens``, ``/v1/audit``); the same door
in front of the status page (token login, then a cookie) and ``/metrics``.

:class:`ApiGuard` is what :class:`powerctl.region.api.Api` calls for every
request once the route is known, *before* the handler runs:

1. the caller's address must not be blocked for failed authentications
   (429 with ``Retry-After``);
2. ``Authorization: Bearer <token>`` must name a live token (401, counted
   against the address, logged without the token);
3. the token's role and cluster scope must allow the route
   (:func:`powerctl.region.auth.denial`; 403);
4. the handler runs with the caller's :class:`~powerctl.region.auth.Principal`
   on the request, so that the requester of whatever it journals is the
   token's name;
5. a change (any method but GET/HEAD) is recorded in the audit trail with
   its outcome; a list is filtered to the token's clusters.

Refused requests write nothing: not even the audit trail (they are logged).
There is no way to switch this off, except ``metrics_public`` for
``/metrics`` alone.
"""

import html
import json
import math
import urllib.parse

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from powerctl.region import auditing, auth
from powerctl.region.api import (
    _STATUS,
    MAX_BODY,
    HttpError,
    _int_arg,
    _json_body,
    _page_args,
    _query,
    paged,
)
from powerctl.region.errors import StoreError

COOKIE = b"powerctl_token"

#: What a change answers when it succeeds, for its audit record (written
#: before the answer exists, in the change's transaction); 200 if not here.
SUCCESS_STATUS = {
    "create_node": 201, "delete_node": 204, "request_power": 202, "confirm_op": 202,
    "create_pod_manager": 201, "delete_pod_manager": 204, "create_token": 201,
    "bulk_power": 202,
}


def _address(request):
    return getattr(request.getClientAddress(), "host", None) or "unknown"


def _status_of(error):
    if isinstance(error, HttpError):
        return error.status, error.code
    for cls, status in _STATUS.items():
        if isinstance(error, cls):
            return status, getattr(error, "code", "error")
    if isinstance(error, StoreError):
        return 400, error.code
    return 500, "internal"


def _peek_json(request):
    """The request's JSON object without consuming it ({} if it is not one)."""
    content = request.content
    if content is None:
        return {}
    position = content.tell()
    raw = content.read(MAX_BODY + 1)
    content.seek(position)
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    return document if isinstance(document, dict) else {}


class ApiGuard:
    """
    :param tokens: a :class:`powerctl.region.tokens.TokenStore`.
    :param clock: gives ``seconds()`` (the reactor) for the failure limiter.
    :param limiter: a :class:`powerctl.region.auth.FailureLimiter`.
    """

    def __init__(self, tokens, clock, log=None, limiter=None):
        self.tokens = tokens
        self.clock = clock
        self.log = log or Logger()
        self.limiter = limiter if limiter is not None else auth.FailureLimiter()

    # -- who is it ------------------------------------------------------

    async def identify(self, request, token):
        """The principal of ``token``, or HttpError 401/429 (nothing written)."""
        address = _address(request)
        wait = self.limiter.blocked(address, self.clock.seconds())
        if wait:
            self.log.warn("refused a request from {address}: too many failed "
                          "authentications", address=address)
            raise HttpError(429, "too_many_failures", "too many failed authentications from "
                           "this address; try again later",
                           headers=[("Retry-After", str(max(1, math.ceil(wait))))])
        if token is None:
            raise HttpError(401, "unauthenticated", "an API token is required "
                           "(Authorization: Bearer <token>)",
                           headers=[("WWW-Authenticate", 'Bearer realm="powerctl"')])
        principal = await self.tokens.authenticate(token)
        if principal is None:
            self.limiter.failed(address, self.clock.seconds())
            self.log.warn("failed authentication from {address}: unknown or revoked token",
                          address=address)
            raise HttpError(401, "unauthenticated", "the API token is unknown or revoked",
                           headers=[("WWW-Authenticate",
                                     'Bearer realm="powerctl", error="invalid_token"')])
        return principal

    # -- the API's hook -------------------------------------------------

    async def call(self, request, handler, params):
        """Run ``handler`` for ``request`` if its token allows it; ``(status, body)``."""
        token = auth.bearer(request.getHeader("authorization"))
        principal = await self.identify(request, token)
        name = getattr(handler, "__name__", "")
        rule = auth.rule_for(name)
        clusters = ()
        if principal.clusters is not None and rule is not None:
            clusters = await self._touched(rule, name, request, params)
        reason = auth.denial(principal, rule, clusters)
        method = request.method.decode("ascii", "replace")
        if reason is not None:
            self.log.warn("refused {method} {path} to token {name} from {address}: {reason}",
                          method=method, path=request.path.decode("utf-8", "replace"),
                          name=principal.name, address=_address(request), reason=reason)
            raise HttpError(403, "forbidden", reason)
        auth.attach(request, principal)
        if not auth.is_write(method):
            status, body = await handler(request, **params)
            return status, await self._filtered(principal, name, body)
        # issue 10: the record commits with the change (powerctl.region.auditing)
        intent = auditing.Intent(principal.name, _address(request), method,
                                 request.uri.decode("utf-8", "replace"),
                                 SUCCESS_STATUS.get(name, 200))
        token = auditing.pending(intent)
        try:
            status, body = await handler(request, **params)
        except Exception as e:
            status_code, code = _status_of(e)
            outcome = (f"refused: {code}" if status_code < 500 else "failed: internal error")
            if intent.written:
                outcome = f"after the change was committed: {outcome}"
            await self._audit(request, principal, status_code, outcome)
            raise
        finally:
            auditing.done(token)
        if not intent.written:  # nothing was written: recorded on its own
            await self._audit(request, principal, status, "ok")
        elif status != intent.status:
            self.log.error("{name} answered {status}, its audit record says {recorded}",
                           name=name, status=status, recorded=intent.status)
        return status, body

    async def _touched(self, rule, name, request, params):
        """The clusters a request reads or changes (for a scoped token)."""
        scope = rule.scope
        found = []
        if scope is auth.Scope.NODE:
            found.append(await self.tokens.cluster_of_node(params["name"]))
            if name == "update_node":
                found.append(_peek_json(request).get("cluster"))
        elif scope is auth.Scope.NEW_NODE:
            found.append(_peek_json(request).get("cluster"))
        elif scope is auth.Scope.OPERATION:
            found.append(await self.tokens.cluster_of_op(params["op_id"]))
        elif scope is auth.Scope.CLUSTER:
            found.append(params["name"])
        elif scope is auth.Scope.BULK:
            body = _peek_json(request)
            found.append(body.get("cluster"))
            nodes = body.get("nodes")
            if isinstance(nodes, list):
                found.extend((await self.tokens.clusters_of_nodes(nodes)).values())
        elif scope is auth.Scope.LIST:
            args = {k.decode("utf-8", "replace"): v for k, v in request.args.items()}
            if args.get("cluster"):
                found.append(args["cluster"][0].decode("utf-8", "replace"))
            if args.get("node"):
                found.append(await self.tokens.cluster_of_node(
                    args["node"][0].decode("utf-8", "replace")))
        return tuple(c for c in found if isinstance(c, str))

    async def _filtered(self, principal, name, body):
        if principal.clusters is None:
            return body
        mapping = None
        if name == "list_ops" and isinstance(body, list):
            mapping = await self.tokens.clusters_of_nodes(o.get("node") for o in body)
        return auth.filter_listing(principal, name, body, mapping)

    async def _audit(self, request, principal, status, outcome):
        try:
            await self.tokens.audit(
                principal.name, _address(request), request.method.decode("ascii", "replace"),
                request.uri.decode("utf-8", "replace"), status, outcome)
        except Exception:
            self.log.failure("could not write the audit record of {method} {path} by {name}",
                             method=request.method.decode("ascii", "replace"),
                             path=request.path.decode("utf-8", "replace"),
                             name=principal.name)

    # -- routes of its own (handlers named as in auth.RULES) -------------

    def routes(self):
        return (
            ("tokens", {"GET": self.list_tokens, "POST": self.create_token}),
            ("tokens/{token_id}", {"DELETE": self.revoke_token}),
            ("audit", {"GET": self.list_audit}),
        )

    async def list_tokens(self, request):
        args = _query(request, ("revoked", "limit", "after"))
        if args.get("revoked", "false") not in ("true", "false"):
            raise HttpError(400, "invalid_input", "revoked: must be true or false")
        limit, after = _page_args(args, "tokens", int)
        rows = await self.tokens.list(include_revoked=args.get("revoked") == "true",
                                      after_id=after or 0, limit=limit + 1)
        return 200, paged(request, args, rows, limit, "tokens", lambda r: r["id"])

    async def create_token(self, request):
        """The new token is in this answer, and never again."""
        body = _json_body(request, ("name", "role", "clusters"), ("name", "role"))
        row, token = await self.tokens.create(body["name"], body["role"],
                                              body.get("clusters"),
                                              created_by=auth.principal_of(request).name)
        request.setHeader("Location", f"/v1/tokens/{row['id']}")
        return 201, dict(row, token=token)

    async def revoke_token(self, request, token_id):
        return 200, await self.tokens.revoke(token_id, auth.principal_of(request).name)

    async def list_audit(self, request):
        """The audit trail, newest first; ``after`` (a cursor) or ``before`` (an id) pages."""
        args = _query(request, ("before", "limit", "actor", "after"))
        limit, after = _page_args(args, "audit", int)
        before = _int_arg(args, "before")
        if after is not None and before is not None:
            raise HttpError(400, "invalid_input", "before: give either after or before")
        rows = await self.tokens.list_audit(before=after if after is not None else before,
                                            limit=limit + 1, actor=args.get("actor"))
        return 200, paged(request, args, rows, limit, "audit", lambda r: r["id"])


# -- the status page and /metrics -----------------------------------------

_LOGIN_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>powerctl: sign in</title></head>
<body><h1>powerctl</h1><p>{message}</p>
<form method="post" action="/login">
<label>API token <input type="password" name="token" autocomplete="off"></label>
<button type="submit">Sign in</button></form></body></html>
"""


def _login_page(message):
    return _LOGIN_PAGE.format(message=html.escape(message)).encode("utf-8")


class _Guarded(resource.Resource):
    """
    ``inner`` (a leaf) once the request carries an unscoped token, as a
    bearer header or the login cookie; else 401 (a login form for a page).
    """

    isLeaf = True

    def __init__(self, inner, guard, page):
        super().__init__()
        self.inner = inner
        self.guard = guard
        self.page = page

    def render(self, request):
        d = defer.ensureDeferred(self._render(request))
        d.addErrback(lambda f: self.guard.log.failure("guarding a web page failed", f))
        return server.NOT_DONE_YET

    async def _render(self, request):
        # The client may leave while its token is checked (a page that
        # reloads drops its /events stream): then there is nobody to render
        # for, and a stream would find no connection to register with.
        gone = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        token = (auth.bearer(request.getHeader("authorization"))
                 or (request.getCookie(COOKIE) or b"").decode("ascii", "replace") or None)
        try:
            principal = await self.guard.identify(request, token)
            if principal.clusters is not None:
                raise HttpError(403, "forbidden", "this page shows every cluster: it needs a "
                               "token without a cluster scope")
        except HttpError as e:
            request.setResponseCode(e.status)
            for name, value in e.headers:
                request.setHeader(name, value)
            request.setHeader(b"Cache-Control", b"no-store")
            if self.page:
                request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
                request.write(_login_page(e.message))
            else:
                request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
                request.write(e.message.encode("utf-8") + b"\n")
            request.finish()
            return
        if gone:
            return
        result = self.inner.render(request)
        if result is not server.NOT_DONE_YET:
            request.write(result)
            request.finish()


def _form_field(request, name):
    """
    One field of an urlencoded form body, parsed here: the region's HTTP
    server (:mod:`powerctl.region.http`) leaves form bodies unparsed, since
    nothing but this login takes one.  The body is already bounded there.
    """
    body = request.content.read() if request.content is not None else b""
    fields = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
    return (fields.get(name) or [""])[0].strip()


class _Login(resource.Resource):
    """``POST /login`` with a form field ``token``: a cookie, then the page."""

    isLeaf = True

    def __init__(self, guard):
        super().__init__()
        self.guard = guard

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return _login_page("Sign in with an API token (viewer or above).")

    def render_POST(self, request):
        d = defer.ensureDeferred(self._login(request))
        d.addErrback(lambda f: self.guard.log.failure("a web login failed", f))
        return server.NOT_DONE_YET

    async def _login(self, request):
        token = _form_field(request, "token")
        try:
            await self.guard.identify(request, token or None)
        except HttpError as e:
            request.setResponseCode(e.status)
            request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
            request.write(_login_page(e.message))
            request.finish()
            return
        request.addCookie(COOKIE, token.encode("ascii", "replace"), path=b"/", httpOnly=True,
                          secure=request.isSecure(), sameSite="strict")
        request.redirect(b"/")
        request.finish()


def protect_web(root, guard, metrics_public=False):
    """
    Put the token door in front of the status page (``root``'s ``b""``
    child) and ``/metrics`` (unless ``metrics_public``), and add ``/login``.
    """
    page = root.children.get(b"")
    if page is not None:
        root.putChild(b"", _Guarded(page, guard, page=True))
    metrics = root.children.get(b"metrics")
    if metrics is not None and not metrics_public:
        root.putChild(b"metrics", _Guarded(metrics, guard, page=False))
    stream = root.children.get(b"events")  # the page's live stream, same door
    if stream is not None:
        root.putChild(b"events", _Guarded(stream, guard, page=False))
    root.putChild(b"login", _Login(guard))
    return root
