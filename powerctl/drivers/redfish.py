"""
The ``redfish`` driver: ``ComputerSystem.Reset`` over HTTP(S), with treq.

Discovery (once per service and system, cached in the driver type):
``GET /redfish/v1/`` -> the ``Systems`` collection -> the system, matched by
the last segment of its URI, by following ``Systems/<system>`` (sushy-tools
answers 307 from a system's name to its id), or by its ``Id`` or ``Name``.
Without a ``system`` parameter the service must have exactly one system.
The service root and the ``Systems`` listing are fetched once per service
and account and shared by all its agents (a chassis manager with 100
systems is listed once, not 100 times; agents discovering at the same time
wait for the same listing), and the system resource fetched by discovery
answers the query that needed it, so a first sweep costs one request per
system and two per service beyond the next sweeps.
The reset target and the reset types come from the system resource
(``ResetType@Redfish.AllowableValues``) or its ``@Redfish.ActionInfo``.
A service that advertises nothing is assumed to take the four common values
(:data:`ASSUMED_RESET_TYPES`); one that advertises values gets only those.

Power states: ``PoweringOn`` and ``PoweringOff`` are reported as UNKNOWN:
the system is neither, and treating a half-done power-on as "off" would let
a superseding off be skipped while the on completes behind it.
Verification (in :mod:`~powerctl.drivers.base`) keeps waiting until the
transition is over, and a change never takes a transition for "already
there".  Sending ``On`` to a
system seen ``PoweringOn`` moments ago (or ``GracefulShutdown`` to one seen
``PoweringOff``) is skipped: it is already doing it, and some services
refuse the duplicate.  A hard off is always sent.

Answers some BMCs give to a reset:

* ``202 Accepted`` with a task monitor in ``Location``: the monitor is
  polled (each GET bounded by the call timeout, waiting ``Retry-After``
  seconds between polls when the service says so, else ``poll_interval``)
  until it stops answering 202, within ``verify_timeout`` in all; a task
  that ends ``Exception``/``Killed``/``Cancelled`` is a protocol error, a
  monitor that is gone (404) once done is fine.  The state is verified by
  queries afterwards as always.
* ``409 Conflict`` (iDRAC's answer to ``ForceOff`` of an off system, or
  ``On`` of an on one): the system is queried once; if it is in the state
  the command leads to, the command counts as done, else the 409 stands.

Authentication: HTTP basic by default.  A driver type built with
``use_sessions=True`` logs in through the SessionService instead, shares one
session per service and user between agents, re-logs in once on a 401, and
deletes every session in :meth:`RedfishDriverType.close`.  A login is never
cancelled half-way by an operation's cancellation (the session would exist
on the BMC without our knowing its token); it is bounded by the timeout and
:meth:`RedfishDriver.quiesced` waits for it.
"""

import sys
import weakref
from urllib.parse import quote, urljoin, urlsplit

import attrs
from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from powerctl.drivers.base import Command, VerifyingDriver, bounded, sleep, with_retries
from powerctl.drivers.bmclimit import address_of_url
from powerctl.drivers.errors import (
    InvalidParameters,
    PowerTimeout,
    ProtocolError,
    UnsupportedError,
)
from powerctl.drivers.http import HttpClients, basic_auth, check_status
from powerctl.drivers.interface import Capabilities, IDriverType, Timing
from powerctl.drivers.schema import Param, Schema
from powerctl.power import PowerState

SCHEMA = Schema("redfish", (
    Param("url", "url", required=True,
          help="service address, e.g. https://10.0.0.5 (/redfish/v1 is implied)"),
    Param("username", "str", help="user for basic auth or the session login"),
    Param("password", "str", secret=True),
    Param("system", "str",
          help="system Id, Name or URI; optional when the service has one system"),
    Param("verify_tls", "bool", default=True,
          help="verify the certificate; false for self-signed BMC certificates"),
    Param("timeout", "float", minimum=0.1, help="seconds for one call (default 10)"),
))

#: Reset types per command, in order of preference.
RESET_PREFERENCES = {
    Command.ON: ("On", "ForceOn"),
    Command.OFF: ("ForceOff",),
    Command.SOFT_OFF: ("GracefulShutdown",),
    Command.CYCLE: ("PowerCycle", "ForceRestart"),
}

#: What we assume of a service that advertises no allowable values.
ASSUMED_RESET_TYPES = ("On", "ForceOff", "GracefulShutdown", "ForceRestart")

#: Redfish PowerState -> the state reported (transitions report the state left).
POWER_STATES = {
    "On": PowerState.ON,
    "Off": PowerState.OFF,
    "PoweringOn": PowerState.UNKNOWN,
    "PoweringOff": PowerState.UNKNOWN,
    "Paused": PowerState.ON,
}

#: A transitional state that already heads where a command would go.
_ALREADY_HEADING = {Command.ON: "PoweringOn", Command.SOFT_OFF: "PoweringOff"}
_TRANSITIONS = frozenset(_ALREADY_HEADING.values())
#: The state a command leads to, for telling "already there" from a real 409.
_LEADS_TO = {Command.ON: PowerState.ON, Command.OFF: PowerState.OFF,
             Command.SOFT_OFF: PowerState.OFF}
#: How a finished Redfish Task says it failed.
_TASK_FAILED = ("Exception", "Killed", "Cancelled", "Interrupted")
#: The longest Retry-After honoured between two polls of a task monitor, and
#: the shortest wait (a "0" must not make a busy loop against the BMC).
MAX_RETRY_AFTER = 60.0
MIN_TASK_POLL = 0.05


#: Where a system's reset action usually is, below the system's URI.
_STANDARD_RESET = "/Actions/ComputerSystem.Reset"


@attrs.frozen
class SystemInfo:
    """
    What discovery learnt about one system.  Kept per system for as long
    as the driver type runs, so it is kept small: ``uri`` as the service
    gave it (a path from the root, the listing's own string when it is
    one of its members), ``reset_target`` None when it is the usual
    ``<uri>/Actions/ComputerSystem.Reset`` (see :meth:`reset_uri`).
    """

    uri: str
    reset_target: str | None
    reset_types: tuple
    advertised: bool

    def reset_uri(self):
        """Where to POST ``ComputerSystem.Reset``."""
        return self.reset_target or self.uri + _STANDARD_RESET

    def reset_type_for(self, command, describe):
        """The advertised reset type for ``command``, or UnsupportedError."""
        for candidate in RESET_PREFERENCES[command]:
            if candidate in self.reset_types:
                return candidate
        raise UnsupportedError(
            f"{describe}: no reset type for {command.value}; wanted one of "
            f"{', '.join(RESET_PREFERENCES[command])}, the system allows "
            f"{', '.join(self.reset_types) or 'none'}"
        )


@attrs.frozen
class Session:
    """A Redfish session: its token (never shown) and its URI."""

    token: str = attrs.field(repr=False)
    uri: str


#: No PowerState seen yet (what ``_last_raw`` starts as).
_NOTHING_SEEN = (None, 0.0)


class _NotFound(ProtocolError):
    """A cached URI answered 404: the service changed, rediscover."""


def retry_after(response, default):
    """
    Seconds a ``Retry-After`` header asks to wait (delta-seconds only; an
    HTTP date or nonsense gives ``default``), at most :data:`MAX_RETRY_AFTER`.
    """
    raw = response.header(b"retry-after")
    try:
        seconds = float(raw.decode("latin-1").strip()) if raw else None
    except (UnicodeDecodeError, ValueError):
        seconds = None
    if seconds is None or seconds != seconds or seconds < 0:
        return default
    return max(MIN_TASK_POLL, min(seconds, MAX_RETRY_AFTER))


def redfish_error_message(response):
    """The ``error.message`` and extended info of a Redfish error body."""
    try:
        error = response.json().get("error")
    except ProtocolError:
        return ""
    if not isinstance(error, dict):
        return ""
    parts = [str(error.get("message") or error.get("code") or "")]
    for info in error.get("@Message.ExtendedInfo") or ():
        if isinstance(info, dict) and info.get("Message"):
            parts.append(str(info["Message"]))
    return "; ".join(p for p in parts if p)[:400]


def service_root(url):
    """The ``/redfish/v1/`` URL of a service given as a base or root URL."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/redfish/v1/"


def _odata_id(doc, *path):
    """``doc[path...]['@odata.id']`` or None."""
    for key in path:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc.get("@odata.id") if isinstance(doc, dict) else None


def _compact(ref, root):
    """
    A resource reference as kept: a path from the service's root as it is
    (interned, so a system's URI is the listing's own string), anything
    else made absolute.
    """
    ref = ref if isinstance(ref, str) else ""
    if ref.startswith("/") and not ref.startswith("//"):
        return sys.intern(ref)
    return urljoin(root, ref)


def _tail(uri):
    return uri.rstrip("/").rsplit("/", 1)[-1]


class _Shared:
    """
    One Deferred awaited by many.  Cancelling a waiter leaves the source
    running (so that cancelling an operation never aborts a login), unless
    ``cancel_unwanted``: then the source is cancelled once its last waiter
    is (a shared listing nobody waits for any more is not worth its
    connection, and one agent alone keeps the old rule: cancelling its
    query aborts the request).
    """

    def __init__(self, source, cancel_unwanted=False):
        self._waiters = []
        self._result = None
        self.done = False
        self._source = source
        self._cancel_unwanted = cancel_unwanted
        source.addBoth(self._fire)

    def _fire(self, result):
        self.done, self._result = True, result
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            self._deliver(waiter)
        return None

    def _deliver(self, waiter):
        if waiter.called:
            return
        if isinstance(self._result, Failure):
            waiter.errback(self._result)
        else:
            waiter.callback(self._result)

    def _unwanted(self, waiter):
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if self._cancel_unwanted and not self._waiters and not self.done:
            self._source.cancel()

    def wait(self):
        waiter = defer.Deferred(self._unwanted)
        if self.done:
            self._deliver(waiter)
        else:
            self._waiters.append(waiter)
        return waiter

    def quiet(self):
        """Fires with None once the source is done, whatever its outcome."""
        return self.wait().addBoth(lambda _: None)


class SessionPool:
    """
    Live Redfish sessions of a driver type, one per (service, user); the
    key holds the password only in memory, it is never shown.
    """

    def __init__(self):
        self._live = {}
        self._logins = {}

    def get(self, key, login):
        """A Deferred Session for ``key``, logging in with ``login()`` once."""
        if key in self._live:
            return defer.succeed(self._live[key][1])
        if key not in self._logins:
            self._logins[key] = _Shared(self._start(key, login))
        return self._logins[key].wait()

    def _start(self, key, login):
        def done(result):
            self._logins.pop(key, None)
            if isinstance(result, Session):
                self._live[key] = (key[0], result)
            return result

        return defer.maybeDeferred(login).addBoth(done)

    def current(self, key):
        entry = self._live.get(key)
        return entry[1] if entry else None

    def invalidate(self, key, session):
        """Forget ``session`` after a 401: the service already dropped it."""
        if self.current(key) is session:
            del self._live[key]

    def quiet(self, key):
        login = self._logins.get(key)
        return login.quiet() if login else defer.succeed(None)

    async def close(self, delete):
        """Wait for logins in flight, then ``delete(client_key, session)`` each."""
        while self._logins:
            await defer.DeferredList([s.quiet() for s in self._logins.values()])
        live, self._live = self._live, {}
        for client_key, session in live.values():
            try:
                await delete(client_key, session)
            except Exception:
                pass  # best effort: the service expires it anyway


@attrs.frozen
class Listing:
    """A service's ``Systems`` collection: its URI and its members' URIs."""

    systems: str
    members: tuple


class _Service:
    """
    One Redfish service as one account sees it, shared by every agent of
    it (the driver type keeps it while an agent does): the HTTP client,
    the ``Authorization`` value (built once), the ``Systems`` listing and
    what discovery learnt of each system.  At 10,000 agents on 100
    services this is 100 objects, not 10,000 copies of the same strings.
    """

    def __init__(self, http, root, username, password, verify_tls):
        self.http = http
        self.root = root
        self.origin = root[:-len("/redfish/v1/")]  # scheme://host:port
        self.username = username
        self._password = password
        self.verify_tls = verify_tls
        self.authorization = basic_auth(username, password) if username is not None else None
        self.listing = None  # a Listing once known
        self.listing_in_flight = None  # a _Shared while being fetched
        self.systems = {}  # system parameter -> SystemInfo

    @property
    def session_key(self):
        return (self.verify_tls, self.root, self.username, self._password)

    def forget(self, system):
        """A cached URI answered 404: list the service again, rediscover."""
        self.systems.pop(system, None)
        self.listing = None


class RedfishDriver(VerifyingDriver):
    """One Redfish ComputerSystem, verified by polling its PowerState."""

    capabilities = Capabilities(queryable=True, soft_off=True, native_cycle=True)

    def __init__(self, driver_type, settings, clock, timing):
        super().__init__(clock, timing)
        self._type = driver_type
        self._service = driver_type.service(
            service_root(settings["url"]), settings["username"],
            settings["password"] or "", bool(settings["verify_tls"]))
        self.system = settings["system"]
        self._last_raw = _NOTHING_SEEN

    # What the service object holds, under the names they always had.
    root = property(lambda self: self._service.root)
    username = property(lambda self: self._service.username)
    verify_tls = property(lambda self: self._service.verify_tls)
    _http = property(lambda self: self._service.http)

    def describe(self):
        return f"redfish {self.root} system {self.system or '(the only one)'}"

    @property
    def _session_key(self):
        return self._service.session_key

    # -- primitives -----------------------------------------------------

    def read_state(self):
        return defer.ensureDeferred(self._with_system(self._read_state))

    def send(self, command):
        return defer.ensureDeferred(
            self._with_system(lambda info, doc: self._send_reset(info, command))
        )

    def quiesced(self):
        if not self._type.use_sessions:
            return defer.succeed(None)
        return self._type.sessions.quiet(self._session_key)

    async def _read_state(self, info, doc=None):
        """
        The system's state; ``doc`` is the system resource when discovery
        fetched it just now (the query it served then costs no request).
        """
        if doc is None or "PowerState" not in doc:
            doc = (await self._call("GET", info.uri)).json()
        raw = doc.get("PowerState")
        # Only a transition is worth remembering (see _send_reset); one
        # tuple per agent for "Off" would cost memory on every node.
        self._last_raw = ((raw, self.clock.seconds()) if raw in _TRANSITIONS
                          else _NOTHING_SEEN)
        try:
            return POWER_STATES[raw]
        except (KeyError, TypeError):
            raise ProtocolError(f"{self.describe()}: unknown PowerState {raw!r}") from None

    async def _send_reset(self, info, command):
        reset_type = info.reset_type_for(command, self.describe())
        raw, seen = self._last_raw
        fresh = self.clock.seconds() - seen <= self.timing.timeout
        if fresh and raw is not None and _ALREADY_HEADING.get(command) == raw:
            return None
        response = await self._call("POST", info.reset_uri(), {"ResetType": reset_type},
                                    check=False)
        if response.code == 409 and command in _LEADS_TO:
            # Some BMCs refuse a reset to the state the system is in: look.
            if await self._read_state(info) == _LEADS_TO[command]:
                return None
        check_status(response, redfish_error_message)
        location = response.header(b"location") if response.code == 202 else None
        if location:
            return urljoin(self.root, location.decode("latin-1"))
        return None

    async def _send(self, command):
        """Send (with retries), then follow the task monitor of a 202, if any."""
        monitor = await with_retries(
            self.clock, self.timing, lambda: self.send(command),
            f"{self.describe()} {command.value}", gate=self.bmc)
        if monitor is not None:
            await self._follow_task(monitor, command)

    async def _follow_task(self, monitor, command):
        what = f"{self.describe()} {command.value} task"
        deadline = self.clock.seconds() + self.timing.verify_timeout
        while True:
            response = await with_retries(
                self.clock, self.timing,
                lambda: defer.ensureDeferred(self._poll_task(monitor)), what, gate=self.bmc)
            if response is None or response.code != 202:
                break
            left = deadline - self.clock.seconds()
            if left <= 0:
                raise PowerTimeout(f"{what}: still running {self.timing.verify_timeout:g}s "
                                   "after the command")
            await sleep(self.clock, min(left, retry_after(response, self.timing.poll_interval)))
        if response is None:
            return  # the monitor is gone once the task is over
        check_status(response, redfish_error_message)
        try:
            doc = response.json() if response.body else {}
        except ProtocolError:
            return  # the operation's own (non-JSON) answer: done
        state = doc.get("TaskState") if isinstance(doc, dict) else None
        if state in _TASK_FAILED:
            messages = "; ".join(str(m.get("Message")) for m in doc.get("Messages") or ()
                                 if isinstance(m, dict) and m.get("Message"))
            raise ProtocolError(f"{what}: the task ended {state}"
                                + (f": {messages}" if messages else ""))

    async def _poll_task(self, monitor):
        """One GET of the task monitor; None once it is gone (404)."""
        try:
            return await self._call("GET", monitor, check=False)
        except _NotFound:
            return None

    async def _with_system(self, call):
        """
        Run ``call(info, doc)`` (``doc``: the system resource if discovery
        fetched it for this call, else None); on a 404 rediscover once (ids
        may change).
        """
        try:
            return await call(*await self._system())
        except _NotFound:
            self._service.forget(self.system)
            return await call(*await self._system())

    # -- HTTP -------------------------------------------------------------

    async def _call(self, method, url, body=None, check=True):
        """
        One authenticated request; the PowerError of a non-2xx answer
        (with ``check=False`` the answer itself, except 404).
        """
        service = self._service
        if url.startswith("/") and not url.startswith("//"):
            url = service.origin + url  # what urljoin gives, without its cost
        elif not url.startswith(("http://", "https://")):
            url = urljoin(service.root, url)
        if self._type.use_sessions and service.username is not None:
            response = await self._with_session(method, url, body)
        else:
            response = await service.http.fetch(method, url, json_body=body,
                                                auth=service.authorization)
        if response.code == 404:
            raise _NotFound(f"{url}: not found: {redfish_error_message(response)}")
        return check_status(response, redfish_error_message) if check else response

    async def _with_session(self, method, url, body):
        sessions, key = self._type.sessions, self._session_key
        for attempt in (1, 2):
            session = await sessions.get(key, self._login)
            response = await self._http.request(
                method, url, headers={"X-Auth-Token": session.token}, json_body=body
            )
            if response.code != 401 or attempt == 2:
                return response
            sessions.invalidate(key, session)
        return response

    def _login(self):
        """The login, bounded by the timeout but not by any one operation."""
        d = defer.ensureDeferred(self._create_session())
        return bounded(d, self.timing.timeout, self.clock, f"{self.describe()} login")

    async def _create_session(self):
        root = await self._http.request("GET", self.root)
        check_status(root, redfish_error_message)
        collection = _odata_id(root.json(), "Links", "Sessions")
        collection = urljoin(self.root, collection or "SessionService/Sessions")
        response = await self._http.request(
            "POST", collection,
            json_body={"UserName": self.username, "Password": self._service._password},
        )
        check_status(response, redfish_error_message)
        token = response.header(b"x-auth-token")
        where = response.header(b"location")
        where = where.decode("latin-1") if where else response.json().get("@odata.id")
        if not token or not where:
            raise ProtocolError(f"{collection}: the login answered no token or location")
        return Session(token.decode("latin-1"), urljoin(collection, where))

    # -- discovery --------------------------------------------------------

    async def _system(self):
        """``(SystemInfo, the system resource or None when cached)``."""
        service = self._service
        cached = service.systems.get(self.system)
        if cached is not None:
            return cached, None
        listing = await self._listing()
        doc = await self._find_system(listing.systems, listing.members)
        info = await self._reset_info(doc)
        service.systems[self.system] = info
        return info, doc

    def _listing(self):
        """The service's Listing: cached, being fetched (waited for) or fetched now."""
        service = self._service
        if service.listing is not None:
            return defer.succeed(service.listing)
        if service.listing_in_flight is None:
            source = bounded(defer.ensureDeferred(self._list()), self.timing.timeout,
                             self.clock, f"{self.describe()} listing")

            def done(result):
                service.listing_in_flight = None
                if isinstance(result, Listing):
                    service.listing = result
                return result

            service.listing_in_flight = _Shared(source.addBoth(done), cancel_unwanted=True)
        return service.listing_in_flight.wait()

    async def _list(self):
        root = (await self._call("GET", self.root)).json()
        systems = _odata_id(root, "Systems")
        if not systems:
            raise ProtocolError(f"{self.root}: the service root has no Systems")
        collection = (await self._call("GET", systems)).json()
        members = tuple(sys.intern(m["@odata.id"]) for m in collection.get("Members") or ()
                        if isinstance(m, dict) and isinstance(m.get("@odata.id"), str)
                        and m["@odata.id"])
        if not members:
            raise ProtocolError(f"{self.root}: the Systems collection is empty")
        return Listing(systems, members)

    def _no_such_system(self, members, reason):
        listing = ", ".join(_tail(m) for m in members)
        return InvalidParameters("system", f"{reason}; the service has: {listing}", "redfish")

    async def _find_system(self, systems, members):
        if self.system is None:
            if len(members) != 1:
                raise self._no_such_system(
                    members, f"required: the service has {len(members)} systems")
            return (await self._call("GET", members[0])).json()
        by_tail = {_tail(m): m for m in members}
        if self.system in by_tail or self.system in members:
            return (await self._call("GET", by_tail.get(self.system, self.system))).json()
        try:
            doc = (await self._call("GET", urljoin(systems + "/", quote(self.system)))).json()
            if doc.get("@odata.id") in members:
                return doc
        except _NotFound:
            pass
        return await self._scan(members)

    async def _scan(self, members):
        """Fetch every member and match its Id or Name (a slow last resort)."""
        try:
            docs = await defer.gatherResults(
                [defer.ensureDeferred(self._call("GET", m)) for m in members],
                consumeErrors=True,
            )
        except defer.FirstError as e:
            e.subFailure.raiseException()
        for member, response in zip(members, docs):
            doc = response.json()
            if self.system in (doc.get("Id"), doc.get("Name")):
                return doc
        raise self._no_such_system(members, f"no system {self.system!r}")

    async def _reset_info(self, doc):
        uri = _compact(doc.get("@odata.id"), self.root)
        action = (doc.get("Actions") or {}).get("#ComputerSystem.Reset")
        if not isinstance(action, dict) or not action.get("target"):
            raise UnsupportedError(f"{urljoin(self.root, uri)}: the system offers no "
                                   "ComputerSystem.Reset")
        allowed = action.get("ResetType@Redfish.AllowableValues")
        if allowed is None and action.get("@Redfish.ActionInfo"):
            allowed = await self._action_info(action["@Redfish.ActionInfo"])
        advertised = isinstance(allowed, list)
        target = _compact(action["target"], self.root)
        return SystemInfo(
            uri=uri,
            reset_target=None if target == uri + _STANDARD_RESET else target,
            reset_types=self._type.reset_types(allowed) if advertised else ASSUMED_RESET_TYPES,
            advertised=advertised,
        )

    async def _action_info(self, uri):
        info = (await self._call("GET", uri)).json()
        for parameter in info.get("Parameters") or ():
            if isinstance(parameter, dict) and parameter.get("Name") == "ResetType":
                return parameter.get("AllowableValues")
        return None


@implementer(IDriverType)
class RedfishDriverType:
    """
    Builds :class:`RedfishDriver` agents; owns what they share: the HTTP
    connection pools, the discovery cache and (optionally) the sessions.
    """

    name = "redfish"
    schema = SCHEMA
    capabilities = RedfishDriver.capabilities

    def __init__(self, reactor, clock=None, timing=Timing(), use_sessions=False,
                 redirect_limit=5, user_agent=None, limiter=None):
        self.reactor = reactor
        self.limiter = limiter  # per-BMC limits (powerctl.drivers.bmclimit), or None
        self.clock = clock or reactor
        self.timing = timing
        self.use_sessions = use_sessions
        # user_agent: the User-Agent of every request (None: treq's default).
        # Keep as many idle connections per BMC as calls may run at once.
        per_host = limiter.limits.max_sessions if limiter is not None else 8
        self.http = HttpClients(reactor, timing.timeout, redirect_limit, user_agent,
                                per_host=per_host)
        self.sessions = SessionPool()
        # (verify_tls, root, username, password) -> _Service, while an agent holds it
        self._services = weakref.WeakValueDictionary()
        self._reset_types = {}  # one tuple per distinct advertised list
        self._handles = weakref.WeakValueDictionary()  # BMC address -> limiter handle

    def bind(self, settings):
        if urlsplit(settings["url"]).username is not None:
            raise InvalidParameters(
                "url", "must not contain credentials; use username and password",
                self.name)
        timing = self.timing
        if settings.get("timeout"):
            timing = attrs.evolve(timing, timeout=settings["timeout"])
        driver = RedfishDriver(self, settings, self.clock, timing)
        if self.limiter is not None:
            address = address_of_url(settings["url"])
            handle = self._handles.get(address)
            if handle is None:  # one per BMC, not one per agent
                handle = self._handles[address] = self.limiter.handle(address)
            driver.bmc = handle
        return driver

    def service(self, root, username, password, verify_tls):
        """The :class:`_Service` of this service and account, shared."""
        key = (verify_tls, root, username, password)
        found = self._services.get(key)
        if found is None:
            found = _Service(self.http.get(verify_tls), root, username, password, verify_tls)
            self._services[key] = found
        return found

    def reset_types(self, allowed):
        """``allowed`` as a tuple shared by every system advertising the same."""
        key = tuple(str(t) for t in allowed)
        return self._reset_types.setdefault(key, key)

    def discovered(self, root, system):
        """What discovery learnt of ``system`` of the service at ``root``, or None."""
        for service in list(self._services.values()):
            if service.root == root and system in service.systems:
                return service.systems[system]
        return None

    def close(self):
        """Delete every session, then close the connection pools."""
        return defer.ensureDeferred(self._close())

    async def _close(self):
        await self.sessions.close(self._delete_session)
        await self.http.close()

    async def _delete_session(self, verify_tls, session):
        d = self.http.get(verify_tls).request(
            "DELETE", session.uri, headers={"X-Auth-Token": session.token})
        await d.addTimeout(self.timing.timeout, self.clock)

