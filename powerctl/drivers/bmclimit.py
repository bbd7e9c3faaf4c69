"""
Pacing: at most ``max_at_once`` holders at a time, and starts at least
``spacing`` seconds apart.  Pure logic on a clock, no I/O.

Two things in powerctl need exactly this shape:

* **Per-BMC limits** (:class:`BmcLimiter`).  BMCs take few sessions at once
  (iDRAC: 8) and dislike bursts, so every call of a driver to one device --
  keyed by its ``address:port``, whatever the protocol -- takes a slot of
  that device's :class:`Pacer` for the duration of one protocol call.
* **Circuits** (:mod:`powerctl.pserv.circuits`): power-ons on one electrical
  circuit, held from the command until the state is verified.

A waiter is a cancellable Deferred: cancelling it (a superseded action)
leaves the queue and no timer behind.  Waiters are served first come,
first served.  The Deferred fires with a *release* callable; releasing
twice is harmless, so ``finally: release()`` is always safe.
"""

import collections

import attrs
from twisted.internet import defer

#: Sessions at once per BMC unless configured (iDRAC's limit).
DEFAULT_MAX_SESSIONS = 8
#: Seconds between the starts of two commands to one BMC unless configured.
DEFAULT_MIN_INTERVAL = 0.0


class Pacer:
    """
    One budget.  ``max_at_once`` None (or 0) means no cap on holders;
    ``spacing`` 0 means starts may coincide.
    """

    def __init__(self, clock, max_at_once=None, spacing=0.0):
        self.clock = clock
        self.max_at_once = max_at_once or None
        self.spacing = float(spacing or 0.0)
        self.in_use = 0
        self.last_start = None
        self._queue = collections.deque()
        self._timer = None
        self._pumping = False

    @property
    def waiting(self):
        return len(self._queue)

    def idle(self):
        """Nobody holds or waits, and the spacing since the last start is over."""
        return (self.in_use == 0 and not self._queue and
                (self.last_start is None
                 or self.clock.seconds() >= self.last_start + self.spacing))

    def reconfigure(self, max_at_once, spacing):
        """A new budget; holders keep their slots, waiters are served under it."""
        self.max_at_once = max_at_once or None
        self.spacing = float(spacing or 0.0)
        self._pump()

    def acquire(self):
        """A Deferred firing with ``release()`` once this caller may start."""
        d = defer.Deferred(self._cancelled)
        self._queue.append(d)
        self._pump()
        return d

    def _cancelled(self, d):
        try:
            self._queue.remove(d)
        except ValueError:
            pass
        self._pump()

    def _release_once(self):
        released = False

        def release():
            nonlocal released
            if released:
                return
            released = True
            self.in_use -= 1
            self._pump()

        return release

    def _pump(self):
        if self._pumping:  # a waiter released synchronously: the loop goes on
            return
        self._pumping = True
        try:
            while self._queue:
                if self.max_at_once is not None and self.in_use >= self.max_at_once:
                    break
                now = self.clock.seconds()
                if self.last_start is not None and now < self.last_start + self.spacing:
                    self._wake_at(self.last_start + self.spacing - now)
                    return
                d = self._queue.popleft()
                self.in_use += 1
                self.last_start = now
                d.callback(self._release_once())
            self._stop_timer()
        finally:
            self._pumping = False

    def _wake_at(self, delay):
        if self._timer is not None and self._timer.active():
            return
        self._timer = self.clock.callLater(delay, self._wake)

    def _wake(self):
        self._timer = None
        self._pump()

    def _stop_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


@attrs.frozen
class BmcLimits:
    """A pserv's per-BMC limits (``[pserv] bmc_max_sessions``, ``bmc_min_interval``)."""

    max_sessions: int = DEFAULT_MAX_SESSIONS
    min_interval: float = DEFAULT_MIN_INTERVAL

    def __attrs_post_init__(self):
        if (isinstance(self.max_sessions, bool) or not isinstance(self.max_sessions, int)
                or self.max_sessions < 1):
            raise ValueError("bmc_max_sessions: must be an integer >= 1")
        if not isinstance(self.min_interval, (int, float)) or self.min_interval < 0:
            raise ValueError("bmc_min_interval: must be a number >= 0")


class BmcLimiter:
    """
    One :class:`Pacer` per BMC address (``host:port``), shared by every
    driver type of a process, so two agents of one device (two Redfish
    systems of one chassis manager, 24 outlets of one PDU) share its limit.
    A pacer is dropped once idle, so the table stays as small as the set of
    devices in use.
    """

    #: the table is swept once it holds this many pacers (or twice what
    #: the last sweep left, if more)
    SWEEP_FROM = 64

    def __init__(self, clock, limits=BmcLimits()):
        self.clock = clock
        self.limits = limits
        self._pacers = {}
        self._sweep_at = self.SWEEP_FROM

    def acquire(self, address):
        """A Deferred firing with ``release()`` when a call to ``address`` may start."""
        self._sweep()
        pacer = self._pacers.get(address)
        if pacer is None:
            pacer = self._pacers[address] = Pacer(
                self.clock, self.limits.max_sessions, self.limits.min_interval)
        return pacer.acquire()

    def handle(self, address):
        """What a driver keeps: ``handle.acquire()`` for its device."""
        return _Handle(self, address)

    def pacer(self, address):
        return self._pacers.get(address)

    def _sweep(self):
        """
        Drop idle pacers.  Only once the table has doubled since the last
        sweep: with 64 actions in flight on as many BMCs, a sweep at every
        call past 64 pacers walked all of them for every protocol call
        (178,000 ``idle()`` checks for 1,000 IPMI power-ons); so the walk
        costs O(1) per call on average and the table stays within twice
        the devices in use.
        """
        if len(self._pacers) < self._sweep_at:
            return
        for address in [a for a, p in self._pacers.items() if p.idle()]:
            del self._pacers[address]
        self._sweep_at = max(self.SWEEP_FROM, 2 * len(self._pacers))


@attrs.frozen
class _Handle:
    limiter: BmcLimiter
    address: str

    def acquire(self):
        return self.limiter.acquire(self.address)


def address_of(host, port):
    """The key of one device: ``host:port`` (IPv6 literals bracketed)."""
    host = str(host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{int(port)}"


def address_of_url(url):
    """The ``host:port`` key of an HTTP(S) URL (default ports filled in)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return address_of(parts.hostname or "", port)
