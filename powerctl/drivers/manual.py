"""
The ``manual`` driver: a person does it, and says so.

An operation registers a *pending confirmation* under the agent's ``label``
in the driver type's :class:`Confirmations`; the operation's Deferred fires
when an operator calls ``confirm(label, state)`` with the state the action
leads to (``off`` for off/soft-off, ``on`` for on/cycle).  Nothing can be
queried.  With ``timeout`` (or the driver type's ``default_timeout``, the pserv's
``manual_timeout`` setting) the operation fails with PowerTimeout after
that many seconds; without either, it waits until confirmed or cancelled.

At most one confirmation is pending per label: a newer request replaces the
older one, which fails with ``CancelledError`` (the registry above never
lets two changing actions run on one node, so this only happens when two
nodes wrongly share a label).
"""

import attrs
from twisted.internet import defer
from zope.interface import implementer

from powerctl.drivers.errors import PowerTimeout, UnsupportedError
from powerctl.drivers.interface import Capabilities, IDriverType, IPowerDriver
from powerctl.drivers.schema import Param, Schema
from powerctl.power import Action, PowerState

SCHEMA = Schema("manual", (
    Param("label", "str", required=True,
          help="what the operator sees and confirms, e.g. the rack position"),
    Param("timeout", "float", minimum=0.1,
          help="seconds to wait for the operator (default: forever)"),
))


@attrs.frozen
class PendingConfirmation:
    """What an operator is asked to do (a value: safe to show)."""

    label: str
    action: Action
    requested_at: float

    @property
    def target(self):
        return self.action.target


@attrs.define
class _Waiting:
    pending: PendingConfirmation
    deferred: defer.Deferred
    timer: object = None


class Confirmations:
    """The operations waiting for an operator, by label."""

    def __init__(self, clock):
        self.clock = clock
        self._waiting = {}

    def pending(self):
        """What is waiting, oldest first."""
        return tuple(sorted((w.pending for w in self._waiting.values()),
                            key=lambda p: p.requested_at))

    def request(self, label, action, timeout=None):
        """A Deferred firing with the target state once ``label`` is confirmed."""
        self.cancel(label)
        d = defer.Deferred(lambda _: self._drop(label, d))
        waiting = _Waiting(PendingConfirmation(label, action, self.clock.seconds()), d)
        if timeout is not None:
            waiting.timer = self.clock.callLater(timeout, self._expire, label, d, timeout)
        self._waiting[label] = waiting
        return d

    def confirm(self, label, state):
        """
        The operator says ``label`` is now ``state``.  KeyError when nothing
        waits for it, ValueError when ``state`` is not what was asked.
        """
        state = PowerState(state)
        waiting = self._waiting[label]
        if state != waiting.pending.target:
            raise ValueError(
                f"{label} was asked to {waiting.pending.action.value}, "
                f"which leaves it {waiting.pending.target.value}, not {state.value}")
        self._drop(label, waiting.deferred)
        waiting.deferred.callback(state)

    def cancel(self, label):
        """Give up the confirmation for ``label``, if any (it fails Cancelled)."""
        waiting = self._waiting.get(label)
        if waiting is not None:
            waiting.deferred.cancel()

    def _expire(self, label, d, timeout):
        waiting = self._waiting.get(label)
        if waiting is None or waiting.deferred is not d:
            return
        waiting.timer = None
        self._drop(label, d)
        d.errback(PowerTimeout(f"manual {label}: not confirmed within {timeout:g}s"))

    def _drop(self, label, d):
        """Forget the entry of ``d`` (and its timer) if it is still current."""
        waiting = self._waiting.get(label)
        if waiting is None or waiting.deferred is not d:
            return
        del self._waiting[label]
        if waiting.timer is not None and waiting.timer.active():
            waiting.timer.cancel()


@implementer(IPowerDriver)
class ManualDriver:
    """One manually operated agent."""

    capabilities = Capabilities(queryable=False, soft_off=True, native_cycle=True)

    def __init__(self, confirmations, label, timeout):
        self._confirmations = confirmations
        self.label = label
        self.timeout = timeout

    def _ask(self, action):
        return self._confirmations.request(self.label, action, self.timeout)

    def on(self):
        return self._ask(Action.ON)

    def off(self):
        return self._ask(Action.OFF)

    def soft_off(self):
        return self._ask(Action.SOFT_OFF)

    def cycle(self):
        return self._ask(Action.CYCLE)

    def confirm(self, state):
        """
        The operator says this agent's device is now ``state``.  KeyError
        when nothing waits for it, ValueError when ``state`` is not what the
        action leads to.
        """
        self._confirmations.confirm(self.label, state)

    def query(self):
        return defer.fail(UnsupportedError(f"manual {self.label}: cannot be queried"))

    def quiesced(self):
        return defer.succeed(None)


@implementer(IDriverType)
class ManualDriverType:
    """Builds :class:`ManualDriver` agents; owns the :class:`Confirmations`."""

    name = "manual"
    schema = SCHEMA
    capabilities = ManualDriver.capabilities

    def __init__(self, clock, default_timeout=None):
        self.confirmations = Confirmations(clock)
        self.default_timeout = default_timeout

    def bind(self, settings):
        timeout = settings["timeout"] if settings["timeout"] is not None else self.default_timeout
        return ManualDriver(self.confirmations, settings["label"], timeout)

    def close(self):
        """Cancel whatever still waits: nobody will confirm it now."""
        for pending in self.confirmations.pending():
            self.confirmations.cancel(pending.label)
        return defer.succeed(None)
