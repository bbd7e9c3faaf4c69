"""
A Redfish service simulator on the Twisted reactor (twisted.web).

Enough of DSP0266 for power control, over real sockets on loopback:
ServiceRoot, the Systems collection, ComputerSystem resources with
``PowerState`` and ``#ComputerSystem.Reset`` (advertised either inline or
through an ActionInfo resource), and a SessionService.  Behaviours copied
from real services because clients get them wrong:

* a reset takes ``delay`` seconds, during which ``PowerState`` is
  ``PoweringOn``/``PoweringOff`` (a graceful shutdown may be ignored, as by
  a host without ACPI);
* a system addressed by its ``Name`` answers 307 to its ``Id`` URI, for
  every method and sub-path (sushy-tools does this; ``redirect_names=False``
  answers 404 like most BMCs); ``name_targets=True`` even advertises the
  reset target under the name, so that the POST itself is redirected;
* wrong credentials answer 401 with a Redfish error body;
* faults for tests and demos: ``hang`` (never answer), ``error`` (500 with
  a Redfish error), ``drop`` (close the connection), ``conflict`` (409 with
  a Redfish error), plus fixed latency;
* as some BMCs do (options): ``task_monitor=True`` answers a reset
  ``202 Accepted`` with a task monitor in ``Location`` and ``Retry-After:
  retry_after``; the monitor answers 202 while the transition lasts, then
  200 with the Task (``TaskState`` = ``task_outcome``, "Completed" unless a
  test says otherwise).  ``conflict_when_already=True`` answers 409 to a
  reset asking for the state the system is in already (iDRAC's answer to
  ``ForceOff`` of an off system), applying nothing.

The simulator counts requests, live sessions and open connections so that
tests can assert that nothing was sent, no session leaked and no socket was
left open; ``log`` keeps a :class:`RequestRecord` per request (time,
method, path, user agent, reset type) so that a test can tell which client
sent what, and when.  ``start(reactor, options)`` runs it for the CLI.

Why one module of this size: the resources of one Redfish service and
the misbehaviours copied from real ones share the service's state; the
size is the protocol's.
"""

import base64
import json
import secrets
import uuid

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.protocols.policies import WrappingFactory
from twisted.web import resource, server
from zope.interface import implementer

ROOT = "/redfish/v1"
ALL_RESET_TYPES = ("On", "ForceOn", "ForceOff", "GracefulShutdown",
                   "ForceRestart", "PowerCycle")
FAULTS = ("hang", "error", "drop", "conflict")


@attrs.define
class SimSystem:
    """One simulated ComputerSystem (mutable: it is the device's state)."""

    id: str
    name: str
    power_state: str = "Off"
    reset_types: tuple = ALL_RESET_TYPES
    action_info: bool = False
    ignore_graceful: bool = False
    resets: list = attrs.field(factory=list)
    _pending: object = attrs.field(default=None, repr=False)

    @property
    def uri(self):
        return f"{ROOT}/Systems/{self.id}"


@attrs.define
class RequestRecord:
    """
    One request as it arrived: when (``reactor.seconds()``), method, path,
    the ``User-Agent`` it carried (None without one) and, for a
    ``ComputerSystem.Reset``, the reset type asked for (None otherwise, or
    when the request was refused before the body was read).
    """

    time: float
    method: str
    path: str
    user_agent: str | None
    reset_type: str | None = None


@attrs.frozen
class Fault:
    """A fault applied to requests whose ``"METHOD /path"`` contains ``match``."""

    kind: str = attrs.field(validator=attrs.validators.in_(FAULTS))
    match: str = ""
    times: int | None = None


def self_signed(hostname="127.0.0.1"):
    """A fresh self-signed certificate and key (PEM bytes) for ``hostname``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(hostname))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM,
                          serialization.PrivateFormat.TraditionalOpenSSL,
                          serialization.NoEncryption()),
    )


@implementer(IOpenSSLContextFactory)
class _ServerTLS:
    """
    A server TLS context from PEM (through ``cryptography`` objects: handing
    pyOpenSSL its own X509/PKey types is deprecated).
    """

    def __init__(self, cert_pem, key_pem):
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from OpenSSL import SSL

        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.use_certificate(x509.load_pem_x509_certificate(cert_pem))
        context.use_privatekey(serialization.load_pem_private_key(key_pem, None))
        self._context = context

    def getContext(self):
        return self._context


def redfish_error(message, code="Base.1.0.GeneralError"):
    """A Redfish error body (``error.message`` and extended info)."""
    return {"error": {
        "code": code, "message": message,
        "@Message.ExtendedInfo": [{"MessageId": code, "Message": message}],
    }}


class _Api(resource.Resource):
    """Every URL goes through :meth:`RedfishSimulator.handle`."""

    isLeaf = True

    def __init__(self, sim):
        super().__init__()
        self.sim = sim

    def render(self, request):
        return self.sim.handle(request)


class RedfishSimulator:
    """
    A Redfish service with ``systems`` (a list of :class:`SimSystem`).
    ``username=None`` disables authentication.  ``delay`` is the switching
    time, ``latency`` is added before every answer.
    """

    def __init__(self, reactor, systems, username=None, password=None, delay=0.0,
                 latency=0.0, tls=False, host="127.0.0.1", port=0,
                 name_targets=False, redirect_names=True, task_monitor=False,
                 retry_after=1, conflict_when_already=False):
        self.reactor = reactor
        self.systems = {s.id: s for s in systems}
        self.username, self._password = username, password
        self._basic = None  # (credentials, expected Authorization value)
        self.delay, self.latency = delay, latency
        self.tls, self.host, self.requested_port = tls, host, port
        self.name_targets = name_targets
        self.redirect_names = redirect_names
        self.task_monitor, self.retry_after = task_monitor, retry_after
        self.task_outcome = "Completed"
        self.conflict_when_already = conflict_when_already
        self.tasks = {}  # task id -> the system whose transition it follows
        self.faults = []
        self.requests = []
        self.log = []
        self.sessions = {}
        self.sessions_created = 0
        self.certificate = None
        self._listener = None
        self._factory = None
        self._delayed = set()

    # -- lifecycle ----------------------------------------------------------

    def start(self):
        """Listen (synchronously); ``self.port`` and ``self.url`` are then set."""
        site = server.Site(_Api(self), timeout=None)
        site.displayTracebacks = False
        site.log = lambda request: None
        self._factory = WrappingFactory(site)
        if self.tls:
            cert, key = self_signed(self.host)
            self.certificate = cert
            options = _ServerTLS(cert, key)
            self._listener = self.reactor.listenSSL(
                self.requested_port, self._factory, options, interface=self.host)
        else:
            self._listener = self.reactor.listenTCP(
                self.requested_port, self._factory, interface=self.host)
        return self

    @property
    def port(self):
        return self._listener.getHost().port

    @property
    def url(self):
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def open_connections(self):
        return len(self._factory.protocols) if self._factory else 0

    @property
    def live_sessions(self):
        return len(self.sessions)

    def stop(self):
        """Stop listening, drop connections and cancel timers; a Deferred."""
        for call in list(self._delayed):
            if call.active():
                call.cancel()
        self._delayed.clear()
        for system in self.systems.values():
            self._settle(system)
        for protocol in list(self._factory.protocols if self._factory else ()):
            protocol.transport.abortConnection()
        listener, self._listener = self._listener, None
        return defer.maybeDeferred(listener.stopListening) if listener else defer.succeed(None)

    # -- faults ---------------------------------------------------------------

    def fault(self, kind, match="", times=None):
        """Apply fault ``kind`` to matching requests (``times`` of them, or all)."""
        self.faults.append(Fault(kind, match, times))

    def clear_faults(self):
        self.faults = []

    def _take_fault(self, line):
        for index, fault in enumerate(self.faults):
            if fault.match in line:
                if fault.times is not None:
                    left = fault.times - 1
                    if left <= 0:
                        del self.faults[index]
                    else:
                        self.faults[index] = attrs.evolve(fault, times=left)
                return fault.kind
        return None

    # -- dispatch ---------------------------------------------------------------

    def handle(self, request):
        """Record, apply faults and latency, then answer."""
        method = request.method.decode()
        path = request.path.decode().rstrip("/") or "/"
        line = f"{method} {path}"
        self.requests.append(line)
        agent = request.getHeader("user-agent")
        record = RequestRecord(self.reactor.seconds(), method, path, agent)
        self.log.append(record)
        request.sim_record = record
        fault = self._take_fault(line)
        if fault == "drop":
            request.transport.abortConnection()
            return server.NOT_DONE_YET
        if fault == "hang":
            return server.NOT_DONE_YET
        if not self.latency:
            return self._answer(request, method, path, fault)
        call = self.reactor.callLater(self.latency, self._late, request, method, path, fault)
        self._delayed.add(call)
        request.notifyFinish().addErrback(lambda _: call.active() and call.cancel())
        return server.NOT_DONE_YET

    def _late(self, request, method, path, fault):
        """Answer after the latency (only runs while the client is there)."""
        self._delayed = {c for c in self._delayed if c.active()}
        body = self._answer(request, method, path, fault)
        request.write(body)
        request.finish()

    def _answer(self, request, method, path, fault):
        if fault == "error":
            return self._json(request, 500, redfish_error("simulated internal error",
                                                          "Base.1.0.InternalError"))
        if fault == "conflict":
            return self._json(request, 409, redfish_error("simulated conflict",
                                                          "Base.1.0.ResourceInUse"))
        try:
            status, body, headers = self._route(request, method, path)
        except _Reply as reply:
            status, body, headers = reply.status, reply.body, reply.headers
        for name, value in headers.items():
            request.setHeader(name, value)
        return self._json(request, status, body)

    def _json(self, request, status, body):
        request.setResponseCode(status)
        if body is None:
            return b""
        request.setHeader("Content-Type", "application/json")
        return json.dumps(body).encode()

    def _route(self, request, method, path):
        if path in ("/redfish", ROOT):
            return self._service_root(method)
        if path == f"{ROOT}/SessionService/Sessions" and method == "POST":
            return self._login(request)
        self._authenticate(request)
        if path == f"{ROOT}/SessionService":
            return 200, {"@odata.id": f"{ROOT}/SessionService",
                         "Sessions": {"@odata.id": f"{ROOT}/SessionService/Sessions"}}, {}
        if path.startswith(f"{ROOT}/SessionService/Sessions/"):
            return self._session(method, path.rsplit("/", 1)[-1])
        if path == f"{ROOT}/Systems":
            return self._collection(method)
        if path.startswith(f"{ROOT}/Systems/"):
            return self._system_path(request, method, path[len(ROOT) + 9:])
        if path.startswith(f"{ROOT}/TaskService/TaskMonitors/"):
            return self._task_monitor(method, path.rsplit("/", 1)[-1])
        raise _Reply.error(404, f"no resource {path}", "Base.1.0.ResourceMissingAtURI")

    # -- resources --------------------------------------------------------------

    def _service_root(self, method):
        _only(method, "GET")
        return 200, {
            "@odata.id": f"{ROOT}/", "Id": "RootService", "Name": "powerctl sim",
            "RedfishVersion": "1.6.0",
            "Systems": {"@odata.id": f"{ROOT}/Systems"},
            "SessionService": {"@odata.id": f"{ROOT}/SessionService"},
            "Links": {"Sessions": {"@odata.id": f"{ROOT}/SessionService/Sessions"}},
        }, {}

    def _collection(self, method):
        _only(method, "GET")
        members = [{"@odata.id": s.uri} for s in self.systems.values()]
        return 200, {"@odata.id": f"{ROOT}/Systems", "Name": "Systems",
                     "Members": members, "Members@odata.count": len(members)}, {}

    def _system_path(self, request, method, rest):
        ident, _, sub = rest.partition("/")
        system = self.systems.get(ident)
        if system is None:
            named = next((s for s in self.systems.values() if s.name == ident), None)
            if named is None or not self.redirect_names:
                raise _Reply.error(404, f"no system {ident}", "Base.1.0.ResourceMissingAtURI")
            location = named.uri + (f"/{sub}" if sub else "")
            return 307, None, {"Location": location}
        if not sub:
            _only(method, "GET")
            return 200, self._system_doc(system), {}
        if sub == "ResetActionInfo" and system.action_info:
            _only(method, "GET")
            return 200, {"@odata.id": f"{system.uri}/ResetActionInfo", "Id": "ResetActionInfo",
                         "Parameters": [{"Name": "ResetType", "Required": True,
                                         "DataType": "String",
                                         "AllowableValues": list(system.reset_types)}]}, {}
        if sub == "Actions/ComputerSystem.Reset":
            _only(method, "POST")
            return self._reset(request, system)
        raise _Reply.error(404, f"no resource {sub}", "Base.1.0.ResourceMissingAtURI")

    def _system_doc(self, system):
        ident = system.name if self.name_targets else system.id
        action = {"target": f"{ROOT}/Systems/{ident}/Actions/ComputerSystem.Reset"}
        if system.action_info:
            action["@Redfish.ActionInfo"] = f"{system.uri}/ResetActionInfo"
        else:
            action["ResetType@Redfish.AllowableValues"] = list(system.reset_types)
        return {"@odata.id": system.uri, "Id": system.id, "Name": system.name,
                "PowerState": system.power_state,
                "Actions": {"#ComputerSystem.Reset": action}}

    def _reset(self, request, system):
        try:
            reset_type = json.loads(request.content.read() or b"{}").get("ResetType")
        except (ValueError, AttributeError):
            raise _Reply.error(400, "malformed JSON", "Base.1.0.MalformedJSON") from None
        if reset_type not in system.reset_types:
            raise _Reply.error(400, f"ResetType {reset_type!r} is not allowed",
                               "Base.1.0.ActionParameterValueNotInList")
        record = getattr(request, "sim_record", None)
        if record is not None:
            record.reset_type = reset_type
        if self.conflict_when_already and _already(system.power_state, reset_type):
            raise _Reply.error(409, f"the system is already {system.power_state}",
                               "Base.1.0.ActionNotSupported")
        system.resets.append(reset_type)
        self._apply(system, reset_type)
        if not self.task_monitor:
            return 204, None, {}
        ident = uuid.uuid4().hex
        self.tasks[ident] = system
        monitor = f"{ROOT}/TaskService/TaskMonitors/{ident}"
        return 202, {"@odata.id": monitor, "TaskState": "Running"}, {
            "Location": monitor, "Retry-After": str(self.retry_after)}

    def _task_monitor(self, method, ident):
        """202 while the reset's transition lasts, then 200 with the finished Task."""
        _only(method, "GET")
        system = self.tasks.get(ident)
        if system is None:
            raise _Reply.error(404, f"no task {ident}", "Base.1.0.ResourceMissingAtURI")
        if system._pending is not None and system._pending.active():
            return 202, {"TaskState": "Running"}, {"Retry-After": str(self.retry_after)}
        return 200, {"Id": ident, "TaskState": self.task_outcome,
                     "TaskStatus": "OK" if self.task_outcome == "Completed" else "Critical",
                     "Messages": [] if self.task_outcome == "Completed" else
                     [{"Message": "simulated task failure"}]}, {}

    # -- power model --------------------------------------------------------------

    def _apply(self, system, reset_type):
        """Start the transition ``reset_type`` asks for."""
        on = system.power_state in ("On", "PoweringOff")
        if reset_type in ("On", "ForceOn"):
            steps = [] if system.power_state == "On" else [("PoweringOn", "On")]
        elif reset_type == "ForceOff":
            steps = [] if system.power_state == "Off" else [("PoweringOff", "Off")]
        elif reset_type == "GracefulShutdown":
            steps = [] if not on or system.ignore_graceful else [("PoweringOff", "Off")]
        else:  # ForceRestart, PowerCycle: off (if on), then on
            steps = ([("PoweringOff", "Off")] if on else []) + [("PoweringOn", "On")]
        if steps:
            self._settle(system)
            self._step(system, steps)

    def _step(self, system, steps):
        if not steps:
            system._pending = None
            return
        (during, after), rest = steps[0], steps[1:]
        if not self.delay:
            system.power_state = after
            self._step(system, rest)
            return
        system.power_state = during

        def arrive():
            self._delayed.discard(call)
            system.power_state = after
            self._step(system, rest)

        call = system._pending = self.reactor.callLater(self.delay, arrive)
        self._delayed.add(call)

    def _settle(self, system):
        """Cancel a transition in progress (a new reset overrides it)."""
        if system._pending is not None and system._pending.active():
            system._pending.cancel()
            self._delayed.discard(system._pending)
        system._pending = None

    # -- authentication and sessions ------------------------------------------------

    def _authenticate(self, request):
        if self.username is None:
            return
        token = request.getHeader("x-auth-token")
        if token is not None:
            if any(secrets.compare_digest(token, t) for t in self.sessions.values()):
                return
            raise _Reply.error(401, "invalid session token", "Base.1.0.NoValidSession",
                               {"WWW-Authenticate": 'Basic realm="sim"'})
        header = request.getHeader("authorization") or ""
        # The usual case first, in one constant-time comparison: a bench
        # sweep sends thousands of these and the simulator shares the CPU
        # with the client it measures.
        expected = self._expected_basic()
        if expected is not None and secrets.compare_digest(header.encode(), expected):
            return
        if header.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                user, password = None, None
            if self._valid(user, password):
                return
        raise _Reply.error(401, "authentication required", "Base.1.0.InsufficientPrivilege",
                           {"WWW-Authenticate": 'Basic realm="sim"'})

    def _expected_basic(self):
        """``Basic <base64>`` of the configured credentials (bytes), or None."""
        key = (self.username, self._password)
        if self._basic is None or self._basic[0] != key:
            if self.username is None:
                return None
            pair = f"{self.username}:{self._password or ''}".encode()
            self._basic = (key, b"Basic " + base64.b64encode(pair))
        return self._basic[1]

    def _valid(self, user, password):
        return (user is not None and secrets.compare_digest(user, self.username)
                and secrets.compare_digest(password or "", self._password or ""))

    def _login(self, request):
        try:
            body = json.loads(request.content.read() or b"{}")
        except ValueError:
            raise _Reply.error(400, "malformed JSON", "Base.1.0.MalformedJSON") from None
        if self.username is not None and not self._valid(body.get("UserName"),
                                                        body.get("Password")):
            raise _Reply.error(401, "invalid credentials", "Base.1.0.InsufficientPrivilege")
        ident = uuid.uuid4().hex[:12]
        token = secrets.token_hex(16)
        self.sessions[ident] = token
        self.sessions_created += 1
        uri = f"{ROOT}/SessionService/Sessions/{ident}"
        return 201, {"@odata.id": uri, "Id": ident, "UserName": body.get("UserName")}, {
            "X-Auth-Token": token, "Location": uri}

    def _session(self, method, ident):
        if ident not in self.sessions:
            raise _Reply.error(404, "no such session", "Base.1.0.ResourceMissingAtURI")
        if method == "DELETE":
            del self.sessions[ident]
            return 204, None, {}
        _only(method, "GET")
        return 200, {"@odata.id": f"{ROOT}/SessionService/Sessions/{ident}", "Id": ident}, {}


class _Reply(Exception):
    """An early answer (an error) raised from deep inside the routing."""

    def __init__(self, status, body, headers=None):
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}

    @classmethod
    def error(cls, status, message, code="Base.1.0.GeneralError", headers=None):
        return cls(status, redfish_error(message, code), headers)


def _already(power_state, reset_type):
    """Whether ``reset_type`` asks for the state the system is in already."""
    if reset_type in ("ForceOff", "GracefulShutdown"):
        return power_state == "Off"
    if reset_type in ("On", "ForceOn"):
        return power_state == "On"
    return False


def _only(method, allowed):
    if method != allowed:
        raise _Reply.error(405, f"method {method} not allowed", "Base.1.0.OperationNotAllowed",
                           {"Allow": allowed})


def make_systems(count, prefix="node", power_state="Off", **kwargs):
    """``count`` systems with ids ``<prefix>-id-N`` and names ``<prefix>N``."""
    return [SimSystem(id=f"{prefix}-id-{n}", name=f"{prefix}{n}",
                      power_state=power_state, **kwargs)
            for n in range(1, count + 1)]


def add_arguments(parser):
    """Options of ``powerctl sim redfish``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: any free port)")
    parser.add_argument("--https", action="store_true", help="serve HTTPS, self-signed")
    parser.add_argument("--systems", type=int, default=1, help="number of systems")
    parser.add_argument("--prefix", default="node", help="system name prefix")
    parser.add_argument("--username", default="admin")
    parser.add_argument("--password", default="password")
    parser.add_argument("--no-auth", action="store_true", help="accept anyone")
    parser.add_argument("--delay", type=float, default=1.0, help="switching time, seconds")
    parser.add_argument("--latency", type=float, default=0.0, help="answer delay, seconds")
    parser.add_argument("--fault", choices=FAULTS, help="apply a fault to every request")
    parser.add_argument("--task-monitor", action="store_true",
                        help="answer resets 202 Accepted with a task monitor to follow")
    parser.add_argument("--retry-after", type=int, default=1,
                        help="Retry-After (seconds) of the task monitor's answers")
    parser.add_argument("--conflict-when-already", action="store_true",
                        help="answer 409 to a reset asking for the state a system is in "
                             "(as iDRAC does to ForceOff of an off system)")
    return parser


def start(reactor, options):
    """Start a simulator from parsed ``options``; returns it (listening)."""
    sim = RedfishSimulator(
        reactor, make_systems(options.systems, options.prefix),
        username=None if options.no_auth else options.username,
        password=None if options.no_auth else options.password,
        delay=options.delay, latency=options.latency, tls=options.https,
        host=options.host, port=options.port,
        task_monitor=getattr(options, "task_monitor", False),
        retry_after=getattr(options, "retry_after", 1),
        conflict_when_already=getattr(options, "conflict_when_already", False),
    )
    if options.fault:
        sim.fault(options.fault)
    return sim.start()
