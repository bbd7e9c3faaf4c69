"""
What every protocol driver shares: bounded calls, retries with backoff,
and verification of the state reached.

A protocol driver subclasses :class:`VerifyingDriver` and implements two
primitives -- :meth:`~VerifyingDriver.read_state` and
:meth:`~VerifyingDriver.send` -- each returning a cancellable Deferred that
fails with a :class:`~powerctl.drivers.errors.PowerError`.  This class turns
them into the verified operations of :class:`IPowerDriver`:

* ``on`` queries first and never touches a host that is already on (so it
  can never hard-cycle a running host);
* ``off``/``on`` succeed only once a query shows the target state;
* ``soft_off`` falls back to a hard off after ``soft_off_timeout``;
* ``cycle`` is a verified off followed by a verified on.

Because everything is a chain of Deferreds awaited in one coroutine,
cancelling the returned Deferred cancels whichever call or sleep is under
way; nothing is left scheduled.
"""

from twisted.internet import defer, task
from twisted.python.failure import Failure
from zope.interface import implementer

from powerctl.drivers.errors import PowerTimeout, UnsupportedError
from powerctl.drivers.interface import Capabilities, IPowerDriver, Timing
from powerctl.power import Action, PowerState


#: A raw command sent to a device, before any verification: one of the
#: actions that change power (``Action.ON``, ``OFF``, ``SOFT_OFF``, ``CYCLE``).
#: The same values as :class:`~powerctl.power.Action`, so the same enum: a
#: second one would be a twin that could drift apart.  ``query`` is never
#: sent this way (it is :meth:`VerifyingDriver.read_state`).
Command = Action


def sleep(clock, seconds):
    """A cancellable Deferred that fires after ``seconds`` on ``clock``."""
    return task.deferLater(clock, seconds, lambda: None)


def bounded(d, seconds, clock, what):
    """
    Give ``d`` at most ``seconds``: on expiry it is cancelled and a
    :class:`PowerTimeout` naming ``what`` is raised instead.

    The Deferred returned is a new one so that *our* cancellation stays a
    cancellation: a protocol layer may answer its own cancellation with a
    (transient) timeout, which :func:`with_retries` would otherwise retry --
    turning a prompt cancel into a full retry cycle.
    """
    timer = None

    def finish(result):
        if timer.active():
            timer.cancel()
        if outer.called:
            return  # already settled by a cancel or the timeout
        if isinstance(result, Failure):
            outer.errback(result)
        else:
            outer.callback(result)

    # Settle first, then cancel ``d``: whatever ``d`` then fails with (its
    # own CancelledError, or a timeout of the protocol layer) is moot.
    def expire():
        finish(Failure(PowerTimeout(f"{what}: no answer within {seconds:g}s")))
        d.cancel()

    def cancel(_):
        finish(Failure(defer.CancelledError()))
        d.cancel()

    outer = defer.Deferred(cancel)
    timer = clock.callLater(seconds, expire)
    d.addBoth(lambda result: finish(result))
    return outer


async def with_retries(clock, timing, call, what, gate=None):
    """
    Run ``call()`` (returning a Deferred) bounded by ``timing.timeout``,
    retrying transient failures ``timing.retries`` times with exponential
    backoff.  Permanent failures (authentication, protocol) are raised at
    once.  With ``gate`` (a per-BMC handle of
    :class:`~powerctl.drivers.bmclimit.BmcLimiter`) each attempt first takes
    a slot of the device, held for that attempt only; waiting for the slot
    is not counted against the timeout (a busy BMC is not a dead one).
    """
    delay = timing.backoff
    attempt = 0
    while True:
        try:
            if gate is None:
                return await bounded(call(), timing.timeout, clock, what)
            release = await gate.acquire()
            try:
                return await bounded(call(), timing.timeout, clock, what)
            finally:
                release()
        except Exception as e:
            if not getattr(e, "transient", False) or attempt >= timing.retries:
                raise
        attempt += 1
        await sleep(clock, delay)
        delay = min(delay * 2, timing.backoff_max)


@implementer(IPowerDriver)
class VerifyingDriver:
    """
    Base of the protocol drivers.  Subclasses set ``capabilities`` and
    implement :meth:`read_state` and :meth:`send`.
    """

    capabilities = Capabilities()

    #: The device's per-BMC slot (``acquire()`` -> release), or None: set by
    #: the driver type from its :class:`~powerctl.drivers.bmclimit.BmcLimiter`.
    bmc = None
    #: The node's circuit budget (``acquire()`` -> release), or None: set by
    #: the pserv's executor.  Taken only when an ``on`` is really sent (a
    #: host found on already spends nothing) and held until it is verified.
    circuit = None
    #: Called (no argument) each time the device answered a query -- its
    #: credentials work -- or None.  The pserv's lock-out guard sets it while
    #: an attempt runs with credentials not proven yet, so the attempts
    #: waiting for that proof start after the first answer, not after the
    #: whole verified action (a second or more of polling).
    accepted = None

    def __init__(self, clock, timing=Timing()):
        self.clock = clock
        self.timing = timing

    # -- primitives -----------------------------------------------------

    def read_state(self):
        """One query of the device: Deferred firing with ON or OFF."""
        raise NotImplementedError

    def send(self, command):
        """Send one :class:`Command`; Deferred firing once it was accepted."""
        raise NotImplementedError

    def describe(self):
        """A short name of the device for messages (no secrets)."""
        return type(self).__name__

    def quiesced(self):
        return defer.succeed(None)

    # -- IPowerDriver ---------------------------------------------------

    def query(self):
        return defer.ensureDeferred(self._query())

    def on(self):
        return defer.ensureDeferred(self._change(Command.ON, PowerState.ON))

    def off(self):
        return defer.ensureDeferred(self._change(Command.OFF, PowerState.OFF))

    def soft_off(self):
        return defer.ensureDeferred(self._soft_off())

    def cycle(self):
        return defer.ensureDeferred(self._cycle())

    # -- the verified operations ---------------------------------------

    async def _query(self):
        state = await with_retries(
            self.clock, self.timing, self.read_state, f"{self.describe()} query",
            gate=self.bmc,
        )
        if self.accepted is not None:
            self.accepted()
        return state

    async def _send(self, command):
        await with_retries(
            self.clock, self.timing, lambda: self.send(command),
            f"{self.describe()} {command.value}", gate=self.bmc,
        )

    async def _wait_for(self, want, limit):
        deadline = self.clock.seconds() + limit
        while True:
            state = await self._query()
            if state == want:
                return state
            if self.clock.seconds() >= deadline:
                raise PowerTimeout(
                    f"{self.describe()}: still {state.value} {limit:g}s after "
                    f"the command, expected {want.value}"
                )
            await sleep(self.clock, self.timing.poll_interval)

    async def _change(self, command, want):
        if await self._query() == want:
            return want
        if command is not Command.ON or self.circuit is None:
            await self._send(command)
            return await self._wait_for(want, self.timing.verify_timeout)
        release = await self.circuit.acquire()
        try:
            await self._send(command)
            return await self._wait_for(want, self.timing.verify_timeout)
        finally:
            release()

    async def _soft_off(self):
        if not self.capabilities.soft_off:
            raise UnsupportedError(f"{self.describe()} cannot shut down gracefully")
        if await self._query() == PowerState.OFF:
            return PowerState.OFF
        await self._send(Command.SOFT_OFF)
        try:
            return await self._wait_for(PowerState.OFF, self.timing.soft_off_timeout)
        except PowerTimeout:
            return await self._change(Command.OFF, PowerState.OFF)

    async def _cycle(self):
        await self._change(Command.OFF, PowerState.OFF)
        return await self._change(Command.ON, PowerState.ON)
