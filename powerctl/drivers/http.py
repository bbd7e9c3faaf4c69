"""
HTTP plumbing shared by the ``redfish`` and ``webhook`` drivers, straight
on Twisted's ``Agent``.

Why this exists rather than plain ``treq.get``:

* **Cheap per request.**  A poll sweep is one GET per node, thousands per
  round, so what a request costs the pserv's CPU matters.  treq parses
  every URL with ``hyperlink`` and converts it to an URI (``idna`` checks
  of every host label) and wraps the agent in four layers (cookies,
  redirects, gzip, auth) per request.  Here a URL that is already plain
  ASCII made of the characters RFC 3986 allows goes to the ``Agent`` as
  bytes as it is (anything else still goes through ``hyperlink``, as with
  treq), the ``Authorization`` header is built directly, and endpoints are
  kept per ``(scheme, host, port)`` (a bounded cache) instead of being
  built for every request.  No cookie jar: neither Redfish nor the
  webhooks depend on cookies, and one jar shared by every BMC of a pserv
  had no business carrying one BMC's cookies.

* **One connection pool per driver type and TLS policy.**  Twisted's pool
  keys cached connections by (scheme, host, port) only, so a connection
  opened *without* certificate verification could otherwise be handed to
  an agent that requires it.  :class:`HttpClients` therefore keeps one
  persistent pool per policy and closes them all in :meth:`close`.  It
  keeps as many idle connections per host as calls may run at once
  against one BMC (the per-BMC session limit), so that a sweep reuses its
  connections rather than opening a new one for every other request, and
  keeps them :data:`IDLE_TIMEOUT` seconds, longer than the pserv's default
  poll interval (60 s), so that the next round finds them open (Twisted's
  default, 30 s here before, closed them all between two rounds: a TCP,
  and for HTTPS a TLS, handshake per BMC and round).  At most
  :func:`max_idle` idle connections per pool (a quarter of the process's
  limit of open files), the oldest closed first: a pserv of 10,000
  single-system BMCs must not run out of file descriptors (the usual soft
  limit is 1,024: then 256 are kept and the other BMCs reconnect each
  round; raise ``LimitNOFILE`` to keep them all).
* **Redirects for every method.**  Twisted's ``RedirectAgent`` (what treq
  uses) refuses to follow 307/308 for anything but GET/HEAD, and re-sends
  without the body.  Redfish services (sushy-tools) answer 307 for a
  system addressed by name, including for the ``ComputerSystem.Reset``
  POST, so :meth:`HttpClient.request` follows redirects itself, keeping
  method and body for 301/302/307/308 and switching to GET for 303.
  Credentials are only re-sent to the same host and never downgraded from
  https to http.
* **Cancellation aborts.**  treq cancels a request that has no response
  yet, but its body readers are not cancellable; :func:`read_body` is, and
  it closes the connection so nothing is left half-read.
* **One error taxonomy.**  Every failure becomes a
  :class:`~powerctl.drivers.errors.PowerError`; ``CancelledError`` passes
  through untouched so that :func:`~powerctl.drivers.base.bounded` can turn
  a timeout into :class:`~powerctl.drivers.errors.PowerTimeout`.
"""

import base64
import collections
import json
import re
from urllib.parse import urljoin, urlsplit

import attrs
from OpenSSL import SSL
from twisted.internet import defer, error as neterror, ssl
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.web import client
from twisted.web.client import PotentialDataLoss, ResponseDone
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IPolicyForHTTPS
from zope.interface import implementer

from powerctl.drivers.errors import (
    AuthenticationError,
    ProtocolError,
    UnreachableError,
)

#: Bound on the size of a body we accept: a BMC page is a few KiB.
MAX_BODY = 4 * 1024 * 1024

#: Redirect statuses that keep the method and body (RFC 9110 allows keeping
#: POST on 301/302; an action must never silently become a GET).
_KEEP_METHOD = frozenset((301, 302, 307, 308))
_SEE_OTHER = 303

#: Headers carrying credentials, dropped when a redirect leaves the host.
_CREDENTIAL_HEADERS = (b"authorization", b"x-auth-token", b"cookie")

#: A URL made only of the characters RFC 3986 allows, in ASCII: it goes on
#: the wire as it is (anything else is converted by ``hyperlink``).
_URI_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")

#: Idle connections kept per host at most (whatever the per-BMC limit says).
MAX_PERSISTENT_PER_HOST = 32
#: Endpoints kept per TLS policy (least recently used dropped first).
ENDPOINT_CACHE = 1024
#: Seconds an idle connection is kept: longer than a default poll interval.
IDLE_TIMEOUT = 120
#: Bounds of the idle connections kept per pool (see :func:`max_idle`).
MIN_IDLE, MAX_IDLE = 64, 16384


def max_idle():
    """
    Idle connections a pool keeps at most: a quarter of the soft limit of
    open files (the two HTTP driver types, each with a pool per TLS policy,
    plus everything else the process opens), within MIN_IDLE..MAX_IDLE.
    """
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return MAX_IDLE
    return max(MIN_IDLE, min(MAX_IDLE, soft // 4))

_JSON = b"application/json; charset=UTF-8"


@attrs.frozen
class HttpResponse:
    """A fully read answer: status, headers, body and the final URL."""

    code: int
    headers: Headers = attrs.field(eq=False)
    body: bytes = attrs.field(repr=False)
    url: str

    def header(self, name, default=None):
        """The first value of header ``name`` as text."""
        values = self.headers.getRawHeaders(name)
        return values[0] if values else default

    def json(self):
        """The body decoded as a JSON object; ProtocolError if it is not one."""
        try:
            value = json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ProtocolError(
                f"{redact_url(self.url)}: answered {self.code} with a body that is not JSON"
            ) from None
        if not isinstance(value, dict):
            raise ProtocolError(f"{redact_url(self.url)}: answered JSON that is not an object")
        return value

    def text(self):
        """The body as text (undecodable bytes replaced: it is only matched)."""
        return self.body.decode("utf-8", errors="replace")


@implementer(IPolicyForHTTPS)
class NoVerifyPolicy:
    """
    TLS without certificate verification, for ``verify_tls=false``: BMCs
    ship self-signed certificates.  The channel is still encrypted.
    """

    def creatorForNetloc(self, hostname, port):
        return ssl.CertificateOptions(verify=False)


class _BodyReader(Protocol):
    """Collects a body up to :data:`MAX_BODY`; see :func:`read_body`."""

    def __init__(self, finished, limit):
        self.finished = finished
        self.limit = limit
        self.parts = []
        self.size = 0

    def dataReceived(self, data):
        if self.finished.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.transport.loseConnection()
            self.finished.errback(ProtocolError(f"answer larger than {self.limit} bytes"))
            return
        self.parts.append(data)

    def connectionLost(self, reason):
        if self.finished.called:
            return
        # names imported once: twisted.web.client is a deprecation proxy
        # whose every attribute look-up costs a Python call
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self.parts))
        else:
            self.finished.errback(reason)


def read_body(response, limit=MAX_BODY):
    """
    Read the whole body of ``response``.  Unlike ``treq.content`` the
    Deferred is cancellable, and cancelling it closes the connection, so a
    server that stalls mid-body cannot pin a socket.
    """
    holder = {}

    def cancel(d):
        transport = getattr(holder.get("reader"), "transport", None)
        if transport is not None:
            transport.loseConnection()

    finished = defer.Deferred(cancel)
    if response.length == 0:
        finished.callback(b"")
        return finished
    holder["reader"] = reader = _BodyReader(finished, limit)
    response.deliverBody(reader)
    return finished


def wire_url(url):
    """
    ``url`` as the bytes the ``Agent`` takes: as it is when it is plain
    ASCII made of the characters RFC 3986 allows (what the drivers build and
    BMCs answer), else encoded by ``hyperlink`` as treq does (international
    host names, spaces or non-ASCII characters in a webhook URL).
    """
    if _URI_CHARS.fullmatch(url):
        return url.encode("ascii")
    from hyperlink import EncodedURL

    return EncodedURL.from_text(url).to_uri().to_text().encode("ascii")


def basic_auth(username, password):
    """The ``Authorization`` value of HTTP basic authentication (RFC 7617)."""
    pair = f"{username}:{password}".encode("utf-8")
    return b"Basic " + base64.b64encode(pair)


@implementer(IBodyProducer)
class _Body:
    """A request body already in memory, written at once."""

    def __init__(self, data):
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer):
        consumer.write(self._data)
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """
    The endpoint of each ``(scheme, host, port)``, kept (at most ``size``,
    least recently used dropped first): Twisted's ``Agent`` otherwise builds
    a new one, TLS connection creator included, for every request.  An
    endpoint is only a recipe for connecting, so one serves any number of
    connections.
    """

    def __init__(self, reactor, policy, connect_timeout, size=ENDPOINT_CACHE):
        self._reactor = reactor
        self._policy = policy
        self._timeout = connect_timeout
        self._size = size
        self._cache = collections.OrderedDict()

    def endpointForURI(self, uri):
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._cache.get(key)
        if endpoint is not None:
            self._cache.move_to_end(key)
            return endpoint
        if uri.scheme not in (b"http", b"https"):
            raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")
        try:
            host = uri.host.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"the host {uri.host!r} is not ASCII") from None
        endpoint = HostnameEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self._policy.creatorForNetloc(uri.host, uri.port),
                                     endpoint)
        self._cache[key] = endpoint
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return endpoint


def redact_url(url):
    """
    ``url`` without user info, query or fragment, for messages: webhook
    URLs often carry tokens there, and passwords are never shown.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _was_cancelled(e):
    """
    Twisted reports a cancelled request as ResponseNeverReceived (or
    ResponseFailed) wrapping CancelledError; it must stay a cancellation so
    that a timeout is reported as a timeout, not as a lost connection.
    """
    return any(r.check(defer.CancelledError) for r in getattr(e, "reasons", None) or ())


def map_failure(e, url):
    """
    Translate a transport exception for ``url`` into a PowerError (or
    return None when it is not a transport failure we know).
    """
    url = redact_url(url)
    if isinstance(e, (neterror.ConnectionRefusedError, neterror.DNSLookupError,
                      neterror.NoRouteError, neterror.TCPTimedOutError,
                      neterror.ConnectError)):
        return UnreachableError(f"{url}: cannot connect ({type(e).__name__})")
    if isinstance(e, client.ResponseNeverReceived) or isinstance(
        e, (client.ResponseFailed, client.RequestTransmissionFailed,
            client.RequestNotSent)
    ):
        reasons = getattr(e, "reasons", []) or []
        for reason in reasons:
            if reason.check(SSL.Error):
                return ProtocolError(
                    f"{url}: TLS handshake failed (certificate not trusted?); "
                    "set verify_tls=false for a self-signed certificate"
                )
        return UnreachableError(f"{url}: the connection was closed before an answer")
    if isinstance(e, (neterror.ConnectionLost, neterror.ConnectionDone)):
        return UnreachableError(f"{url}: the connection was lost")
    if isinstance(e, SSL.Error):
        return ProtocolError(f"{url}: TLS failure")
    return None


def check_status(response, describe_error=None):
    """
    Raise the PowerError a non-2xx answer means: 401/403 are
    authentication failures, everything else a protocol error.
    ``describe_error`` may extract a message from the body.
    """
    if 200 <= response.code < 300:
        return response
    detail = describe_error(response) if describe_error else ""
    detail = f": {detail}" if detail else ""
    url = redact_url(response.url)
    if response.code in (401, 403):
        raise AuthenticationError(
            f"{url}: credentials refused ({response.code}){detail}"
        )
    raise ProtocolError(f"{url}: HTTP {response.code}{detail}")


def _same_host(a, b):
    """Whether credentials may follow a redirect from ``a`` to ``b``."""
    pa, pb = urlsplit(a), urlsplit(b)
    if pa.hostname != pb.hostname:
        return False
    return not (pa.scheme == "https" and pb.scheme == "http")


class HttpClient:
    """
    Requests through one agent (one TLS policy) of a shared pool, with the
    redirect handling and error mapping described in the module docstring.
    """

    def __init__(self, agent, redirect_limit=5, user_agent=None):
        self._agent = agent
        self.redirect_limit = redirect_limit
        self.user_agent = user_agent

    @property
    def user_agent(self):
        """
        Sent as ``User-Agent`` unless the caller's headers name one (a pserv
        names itself, so a BMC's log says which pserv sent what).
        """
        return self._user_agent.decode("utf-8") if self._user_agent else None

    @user_agent.setter
    def user_agent(self, value):
        self._user_agent = value.encode("utf-8") if value else None  # encoded once

    def request(self, method, url, headers=None, json_body=None, auth=None):
        """
        A cancellable Deferred firing with an :class:`HttpResponse` of any
        status (callers decide what a status means), or failing with a
        PowerError for transport problems.  ``auth``: a ``(user,
        password)`` pair for basic authentication, or the ``Authorization``
        value already built (bytes, see :func:`basic_auth`).
        """
        return defer.ensureDeferred(self.fetch(method, url, headers, json_body, auth))

    def fetch(self, method, url, headers=None, json_body=None, auth=None):
        """
        :meth:`request` as a coroutine, for callers that are coroutines
        themselves: awaited directly it saves a Deferred per request, and
        cancelling the caller still cancels the request under way.
        """
        return self._request(method, url, dict(headers) if headers else {}, json_body, auth)

    async def _request(self, method, url, headers, json_body, auth):
        hops = 0
        while True:
            response = await self._one(method, url, headers, json_body, auth)
            location = response.header(b"location")
            if response.code not in _KEEP_METHOD | {_SEE_OTHER} or not location:
                return response
            hops += 1
            if hops > self.redirect_limit:
                raise ProtocolError(
                    f"{redact_url(url)}: more than {self.redirect_limit} redirects")
            target = urljoin(url, location.decode("latin-1"))
            if not _same_host(url, target):
                auth = None
                headers = {k: v for k, v in headers.items()
                           if k.lower().encode() not in _CREDENTIAL_HEADERS}
            if response.code == _SEE_OTHER:
                method, json_body = "GET", None
            url = target

    def _headers(self, headers, json_body, auth):
        raw = Headers()
        for name, value in headers.items():
            raw.addRawHeader(name, value)
        if self._user_agent is not None and not raw.hasHeader(b"user-agent"):
            raw.addRawHeader(b"User-Agent", self._user_agent)
        if json_body is not None:
            raw.setRawHeaders(b"Content-Type", [_JSON])
        if auth is not None:
            value = auth if isinstance(auth, bytes) else basic_auth(*auth)
            raw.setRawHeaders(b"Authorization", [value])
        return raw

    async def _one(self, method, url, headers, json_body, auth):
        body = None
        if json_body is not None:
            body = _Body(json.dumps(json_body, separators=(",", ":")).encode("utf-8"))
        try:
            raw = await self._agent.request(
                method.encode("ascii"), wire_url(url), self._headers(headers, json_body, auth),
                body)
            body = await read_body(raw)
        except defer.CancelledError:
            raise
        except Exception as e:
            if _was_cancelled(e):
                raise defer.CancelledError() from None
            mapped = map_failure(e, url)
            if mapped is None:
                raise
            raise mapped from None
        return HttpResponse(raw.code, raw.headers, body, url)


class _KeptPool(client.HTTPConnectionPool):
    """
    Twisted's persistent pool with a bound on the idle connections of all
    hosts together (Twisted bounds them per host only): past ``max_idle``
    the connection idle the longest is closed.  It uses the pool's
    ``_connections`` and ``_timeouts`` (what is idle, and its timer) as
    ``_putConnection`` itself does.
    """

    def __init__(self, reactor, max_idle):
        super().__init__(reactor, persistent=True)
        self.max_idle = max_idle
        self._order = collections.deque()  # (stamp, key, connection), oldest first
        self._stamps = {}  # idle connection -> the stamp of its last return
        self._next = 0

    def _putConnection(self, key, connection):
        super()._putConnection(key, connection)
        if connection not in self._timeouts:
            return  # refused (not quiescent)
        self._next += 1
        self._stamps[connection] = self._next
        self._order.append((self._next, key, connection))
        while len(self._timeouts) > self.max_idle and self._order:
            stamp, old_key, old = self._order.popleft()
            if self._stamps.get(old) != stamp or old not in self._timeouts:
                continue  # taken since, returned again later, or timed out
            del self._stamps[old]
            self._timeouts.pop(old).cancel()
            self._connections[old_key].remove(old)
            old.transport.loseConnection()
        if len(self._order) > 4 * self.max_idle + 64:  # drop stale entries
            self._stamps = {c: n for c, n in self._stamps.items() if c in self._timeouts}
            self._order = collections.deque(
                e for e in self._order if self._stamps.get(e[2]) == e[0])

    def closeCachedConnections(self):
        self._order.clear()
        self._stamps.clear()
        return super().closeCachedConnections()


class HttpClients:
    """
    The HTTP resources of one driver type: a persistent pool and an agent
    per TLS policy, created on first use and released by :meth:`close`.
    """

    def __init__(self, reactor, connect_timeout=10.0, redirect_limit=5, user_agent=None,
                 per_host=8, idle_timeout=IDLE_TIMEOUT, max_idle=None):
        self.reactor = reactor
        self.connect_timeout = connect_timeout
        self.redirect_limit = redirect_limit
        self.user_agent = user_agent
        #: Idle connections kept per host: as many as may run at once.
        self.per_host = max(1, min(int(per_host), MAX_PERSISTENT_PER_HOST))
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle  # None: max_idle() when a pool is made
        self._clients = {}
        self._pools = []

    def get(self, verify_tls):
        """The :class:`HttpClient` for a TLS policy (verify or not)."""
        verify_tls = bool(verify_tls)
        if verify_tls not in self._clients:
            pool = _KeptPool(self.reactor, self.max_idle or max_idle())
            pool.maxPersistentPerHost = self.per_host
            pool.cachedConnectionTimeout = self.idle_timeout
            policy = client.BrowserLikePolicyForHTTPS() if verify_tls else NoVerifyPolicy()
            agent = client.Agent.usingEndpointFactory(
                self.reactor, _Endpoints(self.reactor, policy, self.connect_timeout), pool)
            self._pools.append(pool)
            self._clients[verify_tls] = HttpClient(agent, self.redirect_limit,
                                                   self.user_agent)
        return self._clients[verify_tls]

    def close(self):
        """Close every cached connection; a Deferred."""
        pools, self._pools, self._clients = self._pools, [], {}
        return defer.DeferredList(
            [pool.closeCachedConnections() for pool in pools], consumeErrors=True
        )
