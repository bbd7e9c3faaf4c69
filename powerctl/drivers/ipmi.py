"""
The ``ipmi`` power driver: IPMI 2.0 over LAN through pyghmi.

pyghmi is synchronous: every call blocks its thread while pyghmi's own event
loop (shared by all sessions of the process) retries and times out.  So the
driver type owns:

* a dedicated, bounded :class:`~twisted.python.threadpool.ThreadPool` of
  daemon threads (a thread stuck on a dead BMC must never keep the process
  alive or hold up the reactor's own pool);
* one :class:`_Bmc` slot per (host, port, username): the pyghmi ``Command``
  (session) reused across calls while it is kept, a ``DeferredLock`` that
  serialises calls to that BMC (pyghmi degrades badly with concurrent calls
  on one session), the minimum interval between commands, and the
  bookkeeping ``quiesced()`` needs;
* which idle sessions are kept (:mod:`powerctl.drivers.ipmi_sessions`: at
  most ``max_sessions``, each at most ``max_idle`` seconds; the others are
  logged out, so memory does not grow with the number of BMCs -- a session
  is about 10 KB, issue 14);
* a semaphore capping concurrent logins (logins are the expensive and
  fragile part of IPMI; see ``bench/ipmi_many_bmcs.py``).

A call holds the BMC's lock until its *thread* returns, not until its
Deferred fires: a cancelled or timed-out call fires at once, but the next
call to that BMC waits for the thread, which we hurry by marking the pyghmi
session dead (pyghmi then gives up at its next retry tick, about a second).
The session is discarded and a fresh one logs in on the next call.

What pyghmi's public API cannot do (interrupting a blocked call, pinning
cipher suite 3, ...) needs its private internals: those uses are all in
:mod:`powerctl.drivers._pyghmi_compat`, which says which pyghmi versions
they were checked against.
"""

import weakref

import attrs
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from powerctl.drivers import _pyghmi_compat as pyghmi_compat
from powerctl.drivers._pyghmi_compat import ABORTED, abort_session
from powerctl.drivers.base import Command, VerifyingDriver, sleep
from powerctl.drivers.bmclimit import address_of
from powerctl.drivers.errors import (
    AuthenticationError,
    PowerError,
    PowerTimeout,
    ProtocolError,
    UnreachableError,
    UnsupportedError,
)
from powerctl.drivers.interface import Capabilities, IDriverType, Timing
from powerctl.drivers.ipmi_sessions import IdleSessions
from powerctl.drivers.schema import Param, Schema
from powerctl.power import PowerState

log = Logger()

#: IPMI privilege levels (IPMI 2.0 table 6-1) as pyghmi's ``privlevel``.
PRIVILEGES = {"user": 2, "operator": 3, "administrator": 4}

#: pyghmi ``set_power`` verbs for our raw commands.  ``boot`` is "on if off,
#: reset if on": the closest to a native cycle that never leaves a host off.
VERBS = {
    Command.ON: "on",
    Command.OFF: "off",
    Command.SOFT_OFF: "shutdown",
    Command.CYCLE: "boot",
}

DEFAULT_MIN_INTERVAL = 0.2

SCHEMA = Schema("ipmi", (
    Param("host", "host", required=True, help="BMC address or name"),
    Param("port", "port", default=623, help="BMC UDP port"),
    Param("username", "str", default="", help="IPMI user (empty: anonymous)"),
    Param("password", "str", required=True, secret=True, help="IPMI password"),
    Param("privilege", "str", default="administrator", choices=tuple(PRIVILEGES),
          help="privilege level requested for the session"),
    Param("cipher_suite", "int", choices=(3, 17),
          help="RMCP+ cipher suite; unset: try 17, fall back to 3"),
    Param("min_interval", "float", default=DEFAULT_MIN_INTERVAL, minimum=0.0,
          help="seconds of quiet between commands to the same BMC"),
    Param("timeout", "float", default=None, minimum=0.1,
          help="seconds one IPMI call may take"),
))

#: pyghmi error texts (they carry no codes) and what they mean to us.
_AUTH_TEXTS = ("incorrect password", "unauthorized name", "unauthorized role",
               "invalid role", "unauthorized guid", "wrong kg",
               "insufficient privilege", "privelege level", "privilege level")
_UNSUPPORTED_TEXTS = ("invalid command", "not supported", "unknown power state",
                      "no cipher suite match")
_TIMEOUT_TEXTS = ("timeout", "no longer connected", "session failed")
_UNREACHABLE_TEXTS = ("unable to transmit",)


@attrs.frozen
class BmcKey:
    """What identifies one BMC session: where, and as whom."""

    host: str
    port: int
    username: str


@attrs.frozen
class Credentials:
    """How to log in; bytes because pyghmi only reuses sessions for bytes."""

    username: bytes
    password: bytes = attrs.field(repr=False)
    privilege: int
    cipher_suite: int | None


def classify(exc, logged_in, where):
    """
    Turn a pyghmi exception into a :class:`PowerError`.  The message never
    includes the password: pyghmi's texts do not, and we only add ``where``.
    """
    if isinstance(exc, PowerError):
        return exc
    text = str(exc.args[0]) if getattr(exc, "args", None) and exc.args[0] else ""
    lowered = text.lower()
    if ABORTED in text:
        return UnreachableError(f"{where}: call abandoned (cancelled or driver closed)")
    if any(t in lowered for t in _AUTH_TEXTS):
        return AuthenticationError(f"{where}: BMC refused the credentials ({text})")
    if any(t in lowered for t in _UNSUPPORTED_TEXTS):
        return UnsupportedError(f"{where}: {text}")
    if any(t in lowered for t in _UNREACHABLE_TEXTS):
        return UnreachableError(f"{where}: {text}")
    if not text or any(t in lowered for t in _TIMEOUT_TEXTS):
        if not logged_in:
            return UnreachableError(f"{where}: no answer to the IPMI login")
        return PowerTimeout(f"{where}: no answer ({text or 'timeout'})")
    if type(exc).__module__.startswith("pyghmi"):
        return ProtocolError(f"{where}: {text}")
    return ProtocolError(f"{where}: unexpected {type(exc).__name__}: {text}")


class _DaemonThreadPool(ThreadPool):
    """Worker threads that never keep the interpreter alive on exit."""

    @staticmethod
    def threadFactory(*args, **kwargs):
        import threading

        thread = threading.Thread(*args, **kwargs)
        thread.daemon = True
        return thread


class _Bmc:
    """
    Everything about one BMC: its reusable session, the lock that
    serialises calls, and the quiet interval.  Mutable by nature; owned by
    :class:`IpmiDriverType`, touched only from the reactor thread except for
    ``command``, which only the (serialised) worker thread replaces.
    """

    # one per BMC, so one per node of an IPMI pserv: no instance dict (issue 14)
    __slots__ = ("owner", "key", "lock", "command", "credentials", "last_done", "last_used",
                 "running", "_gate", "abandoned", "_quiesce_waiters")

    def __init__(self, owner, key):
        self.owner = owner
        self.key = key
        self.lock = defer.DeferredLock()
        self.command = None
        self.credentials = None
        self.last_done = None
        self.last_used = None
        self.running = False
        self._gate = None
        self.abandoned = False
        self._quiesce_waiters = None  # a list while someone waits (one per BMC: issue 14)

    def describe(self):
        return f"ipmi {self.key.username or '(anonymous)'}@{self.key.host}:{self.key.port}"

    # -- reactor side ------------------------------------------------------

    async def call(self, credentials, min_interval, work):
        """
        Run ``work(command)`` in a worker thread once this BMC is free and
        quiet, with a logged-in session for ``credentials``.
        """
        await self.lock.acquire()
        handed_over = False
        try:
            await self._quiet(min_interval)
            if self.owner.closed:
                raise UnreachableError(f"{self.describe()}: driver is closed")
            outcome = self._start(credentials, work)
            handed_over = True
        finally:
            if not handed_over:
                self.lock.release()
        return await outcome

    async def _quiet(self, min_interval):
        """Wait until ``min_interval`` has passed since the previous call."""
        if self.last_done is None or min_interval <= 0:
            return
        wait = self.last_done + min_interval - self.owner.clock.seconds()
        if wait > 0:
            await sleep(self.owner.clock, wait)

    def _start(self, credentials, work):
        """
        Start the thread; return a Deferred of its outcome that can be
        cancelled at once (the thread itself is hurried, then awaited by
        the lock and by :meth:`quiesced`).
        """
        needs_login = not self._reusable(credentials)
        self.owner.idle.busy(self.key)
        self.running = True
        self.abandoned = False
        holds_login = []
        if needs_login:
            gate = self.owner.logins.acquire()
            gate.addCallback(holds_login.append)
        else:
            gate = defer.succeed(None)
        self._gate = gate
        mirror = defer.Deferred(canceller=lambda _: self._abort(credentials))

        def run(_):
            return deferToThreadPool(
                self.owner.reactor, self.owner.pool,
                self._in_thread, credentials, work, needs_login,
            )

        def finished(result):
            if holds_login:
                self.owner.logins.release()
            self._finished()
            if not mirror.called:
                (mirror.errback if isinstance(result, Failure) else mirror.callback)(result)

        gate.addCallback(run).addBoth(finished)
        return mirror

    def _abort(self, credentials):
        """The caller gave up: hurry the thread, drop the session."""
        self.abandoned = True
        if self._gate is not None and not self._gate.called:
            self._gate.cancel()
            return
        command, self.command = self.command, None
        abort_session(pyghmi_compat.session_of(command))
        for session in pyghmi_compat.pending_sessions(
                self.key.host, self.key.port, credentials.username):
            abort_session(session)

    def _finished(self):
        self.running = False
        self.last_done = self.last_used = self.owner.clock.seconds()
        self.lock.release()
        self.owner.session_idle(self)
        waiters, self._quiesce_waiters = self._quiesce_waiters, None
        for d in waiters or ():
            d.callback(None)

    def log_out_idle(self):
        """
        Log out the kept session now (the keeping policy chose it): in a
        worker thread, holding this BMC's lock, so that no call logs in to
        the BMC meanwhile (pyghmi would hand it this very session, found
        still logged in in its table, and the logout would break that call).
        Nothing to do if a call holds or awaits the BMC: it uses the session.
        """
        if self.running or self.lock.locked or self.command is None:
            return
        command, self.command = self.command, None
        self.lock.acquire()  # free, so taken at once
        self.running = True
        self.abandoned = False
        done = deferToThreadPool(self.owner.reactor, self.owner.pool,
                                 pyghmi_compat.retire, command)
        done.addErrback(lambda f: log.failure("{bmc}: logging out an idle session",
                                              f, bmc=self.describe()))
        done.addBoth(lambda _: self._finished())

    def _reusable(self, credentials):
        command = self.command
        if command is None or self.credentials != credentials:
            return False
        if not pyghmi_compat.is_logged_in(pyghmi_compat.session_of(command)):
            return False
        idle = self.owner.clock.seconds() - (self.last_used or 0)
        return idle < self.owner.max_idle

    def quiesced(self):
        """Fires once no thread is working on this BMC."""
        if not self.running:
            return defer.succeed(None)
        d = defer.Deferred()
        if self._quiesce_waiters is None:
            self._quiesce_waiters = []
        self._quiesce_waiters.append(d)
        return d

    # -- worker thread side ------------------------------------------------

    def _in_thread(self, credentials, work, needs_login):
        """Log in if needed, run ``work``; map every failure."""
        logged_in = not needs_login
        try:
            if needs_login:
                self._retire(self.command)
                self.command = None
                self.command = self.owner.connect(self.key, credentials)
                self.credentials = credentials
                logged_in = True
            return work(self.command)
        except Exception as e:
            command, self.command = self.command, None
            self._retire(command)
            if self.abandoned:
                raise UnreachableError(
                    f"{self.describe()}: call abandoned (cancelled or driver closed)"
                ) from None
            raise classify(e, logged_in, self.describe()) from None

    @staticmethod
    def _retire(command):
        """Close a session we no longer trust (quick: no retries)."""
        pyghmi_compat.retire(command)


@implementer(IDriverType)
class IpmiDriverType:
    """
    The ``ipmi`` driver type: owns the worker threads and one session per
    BMC.  ``max_threads`` bounds how many BMCs are talked to at once;
    ``max_logins`` how many of those may be logging in.

    Sized from ``bench/ipmi_many_bmcs.py`` (loopback, simulated BMCs):
    throughput across BMCs grows with threads ~ threads / BMC latency up to
    ~1,500-2,800 queries/s (GIL-bound) at 32-64 threads, while the median
    latency of each call starts to grow past ~16-32 threads; 20 concurrent
    logins cost no more than one; several threads on *one* session gain
    nothing (5 threads: same wall time, 5x the latency).  Hence 32 threads,
    one call at a time per BMC, and logins capped at half the threads so a
    login storm after a restart leaves room for queries on live sessions.

    Idle sessions are kept for reuse, at most ``max_sessions`` of them
    (least recently used logged out first) and each for at most
    ``max_idle`` seconds (``None``: no bound on their number); see
    :mod:`powerctl.drivers.ipmi_sessions`.  256 sessions are about 2.5 MB;
    pyghmi's wait loop walks every kept session at every turn, so keeping
    more also costs every call CPU (``bench/ipmi_memory.py``: a login sweep
    of 3,000 BMCs took 6.1 s CPU keeping none, 7.3 s keeping 256, 9.7 s
    keeping 1,024).  256 leaves a session reused a second later (a power
    change being verified) in place while a login-bound poll sweep retires
    about 150-300 others a second on this machine.
    """

    name = "ipmi"
    schema = SCHEMA
    capabilities = Capabilities(queryable=True, soft_off=True, native_cycle=True)

    def __init__(self, reactor=None, clock=None, timing=Timing(), max_threads=32,
                 max_logins=16, max_idle=20.0, close_timeout=5.0, limiter=None,
                 max_sessions=256):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.clock = clock or reactor
        self.timing = timing
        self.max_idle = max_idle
        # The process's per-BMC limits (powerctl.drivers.bmclimit), or None.
        # Calls to one BMC are serialised here anyway; the limiter adds the
        # pserv's minimum interval between starts, shared with other drivers.
        self.limiter = limiter
        self.close_timeout = close_timeout
        self.pool = _DaemonThreadPool(0, max_threads, name="powerctl-ipmi")
        self.logins = defer.DeferredSemaphore(max_logins)
        self.closed = False
        self._bmcs = {}
        self._suite3 = None
        self.idle = IdleSessions(max_sessions, max_idle)
        # one Credentials object per distinct login, shared by the drivers
        # using it (fleets often share one BMC account; issue 14: memory)
        self._logins = weakref.WeakValueDictionary()
        self._reaper = None  # the clock's call that logs out sessions idle too long

    def bind(self, settings):
        key = BmcKey(settings["host"], settings["port"], settings["username"] or "")
        login = ((settings["username"] or "").encode("utf-8"),
                 settings["password"].encode("utf-8"),
                 PRIVILEGES[settings["privilege"] or "administrator"],
                 settings["cipher_suite"])
        credentials = self._logins.get(login)
        if credentials is None:
            credentials = self._logins[login] = Credentials(*login)
        timing = self.timing
        if settings.get("timeout") is not None:
            timing = attrs.evolve(timing, timeout=settings["timeout"])
        min_interval = settings.get("min_interval")
        if min_interval is None:
            min_interval = DEFAULT_MIN_INTERVAL
        driver = IpmiDriver(self, self._slot(key), credentials, min_interval, timing)
        if self.limiter is not None:
            driver.bmc = self.limiter.handle(address_of(settings["host"], settings["port"]))
        return driver

    def _slot(self, key):
        slot = self._bmcs.get(key)
        if slot is None:
            slot = self._bmcs[key] = _Bmc(self, key)
        return slot

    def session_idle(self, slot):
        """
        ``slot``'s call ended (reactor thread): keep its session as idle,
        unless it has none or the BMC is already taken again; log out
        whatever the keeping policy then drops.
        """
        if slot.command is None or slot.running or slot.lock.locked or self.closed:
            self.idle.busy(slot.key)
            return
        for key in self.idle.idle(slot.key, self.clock.seconds()):
            self._bmcs[key].log_out_idle()
        self._schedule_reaper()

    def _schedule_reaper(self):
        """One timer, due when the oldest idle session reaches ``max_idle``."""
        due = self.idle.next_expiry()
        if due is None or self.closed:
            return
        reaper = self._reaper
        if reaper is not None and reaper.active():
            if reaper.getTime() <= due:
                return  # early at worst: it looks again and re-arms
            reaper.cancel()
        self._reaper = self.clock.callLater(max(0.0, due - self.clock.seconds()), self._reap)

    def _reap(self):
        self._reaper = None
        for key in self.idle.expired(self.clock.seconds()):
            self._bmcs[key].log_out_idle()
        self._schedule_reaper()

    def _ensure_pool(self):
        if not self.pool.started and not self.closed:
            self.pool.start()

    def connect(self, key, credentials):
        """
        Log in (runs in a worker thread).  Returns a pyghmi ``Command``
        whose session later calls reuse; a pinned cipher suite is checked.
        """
        from pyghmi.ipmi import command as ipmicommand

        if credentials.cipher_suite == 3:
            if self._suite3 is None:
                self._suite3 = pyghmi_compat.suite3_session_class()
            # Registers the session in pyghmi's table; Command() below then
            # finds and reuses it instead of negotiating suite 17.
            self._suite3(bmc=key.host, userid=credentials.username,
                         password=credentials.password, port=key.port,
                         privlevel=credentials.privilege)
        command = ipmicommand.Command(
            bmc=key.host, userid=credentials.username,
            password=credentials.password, port=key.port,
            privlevel=credentials.privilege,
        )
        if credentials.cipher_suite == 17:
            if not pyghmi_compat.negotiated_sha256(command):
                raise UnsupportedError("BMC does not offer cipher suite 17")
        # pyghmi re-identifies a BMC of no known OEM before *every* call (an
        # extra Get Device ID round trip); identify once per session.
        pyghmi_compat.identify_once(command)
        return command

    def run(self, slot, credentials, min_interval, work):
        """A cancellable Deferred of ``work(command)`` on ``slot``'s BMC."""
        if self.closed:
            return defer.fail(UnreachableError(f"{slot.describe()}: driver is closed"))
        self._ensure_pool()
        return defer.ensureDeferred(slot.call(credentials, min_interval, work))

    def close(self):
        """
        Stop: hurry every running call, log out idle sessions, stop the
        threads.  Fires within ``close_timeout`` even if a thread is stuck
        in pyghmi (the threads are daemons and cannot hold up exit).
        """
        self.closed = True
        if self._reaper is not None and self._reaper.active():
            self._reaper.cancel()
        self._reaper = None
        for slot in self._bmcs.values():
            if slot.running:
                slot._abort(slot.credentials)
        if not self.pool.started:
            return defer.succeed(None)
        for slot in self._bmcs.values():
            if not slot.running and slot.command is not None:
                command, slot.command = slot.command, None
                self.pool.callInThread(slot._retire, command)
        stopped = self._join_in_background()
        stopped.addTimeout(self.close_timeout, self.clock)
        stopped.addErrback(self._stop_timed_out)
        return stopped

    def _join_in_background(self):
        """
        ``ThreadPool.stop`` joins the workers, which blocks; join from a
        daemon thread of our own so the reactor never waits on pyghmi.
        """
        import threading

        done = defer.Deferred()

        def join():
            self.pool.stop()
            self.reactor.callFromThread(lambda: done.called or done.callback(None))

        threading.Thread(target=join, name="powerctl-ipmi-close", daemon=True).start()
        return done

    def _stop_timed_out(self, failure):
        failure.trap(defer.TimeoutError, defer.CancelledError)
        log.warn("ipmi: worker threads still busy after {t}s; not waiting",
                 t=self.close_timeout)

    @property
    def sessions(self):
        """How many BMC sessions are open (for metrics and tests)."""
        return sum(1 for s in self._bmcs.values() if s.command is not None)


class IpmiDriver(VerifyingDriver):
    """One agent's BMC: the primitives of :class:`VerifyingDriver`."""

    capabilities = IpmiDriverType.capabilities

    def __init__(self, driver_type, slot, credentials, min_interval, timing):
        super().__init__(driver_type.clock, timing)
        self.driver_type = driver_type
        self.slot = slot
        self.credentials = credentials
        self.min_interval = min_interval

    def describe(self):
        return self.slot.describe()

    def _run(self, work):
        return self.driver_type.run(self.slot, self.credentials, self.min_interval, work)

    def read_state(self):
        return self._run(_read_power)

    def send(self, command):
        verb = VERBS.get(command)
        if verb is None:
            return defer.fail(UnsupportedError(f"{self.describe()}: no IPMI verb for {command}"))
        return self._run(lambda ipmi: ipmi.set_power(verb, wait=False))

    def quiesced(self):
        return self.slot.quiesced()


def _read_power(ipmi):
    """``get_power`` as a :class:`PowerState` (runs in a worker thread)."""
    state = ipmi.get_power().get("powerstate")
    if state == "on":
        return PowerState.ON
    if state == "off":
        return PowerState.OFF
    raise ProtocolError(f"unexpected power state {state!r}")

