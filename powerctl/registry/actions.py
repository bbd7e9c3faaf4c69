"""
Power actions and what their callers get back.

A :class:`PowerAction` is one caller's request -- node, action, operation
id -- together with the Deferred that caller waits on.  The registry fires
that Deferred exactly once with an :class:`Outcome`, or fails it with the
driver's error, :class:`Superseded` or :class:`Cancelled`.
"""

import attrs
from twisted.internet import defer
from zope.interface import Attribute, Interface, implementer

from powerctl.power import Action, PowerState


class Superseded(Exception):
    """The operation was replaced by a newer one before it finished."""

    def __init__(self, operation_id, by):
        super().__init__(f"operation {operation_id} superseded by {by}")
        self.operation_id = operation_id
        self.by = by


class Cancelled(Exception):
    """The operation was cancelled (by its caller, or on shutdown)."""

    def __init__(self, operation_id, reason="cancelled", by=None):
        super().__init__(f"operation {operation_id} {reason}")
        self.operation_id = operation_id
        self.reason = reason
        self.by = by


@attrs.frozen
class Observed:
    """
    What an executor reports: the state seen and the agent(s) that acted;
    with a power topology (:mod:`powerctl.drivers.topology`) also the
    acting ``level`` (1 first), its ``devices`` (``DeviceResult``: the state
    or error of each), a ``warning`` when the success is degraded (on through
    some devices only), whether a query ``verified`` the state, and the
    levels that failed before (``failed_levels``, as JSON).
    """

    state: PowerState
    agent: str | None = None
    level: int | None = None
    devices: tuple = ()
    warning: str | None = None
    verified: bool = True
    failed_levels: tuple = ()

    def detail(self):
        """What the journal keeps beside the state (a JSON object), or None."""
        if self.level is None:
            return None
        out = {"level": self.level, "devices": [d.as_json() for d in self.devices],
               "verified": self.verified}
        if self.warning:
            out["warning"] = self.warning
        if self.failed_levels:
            out["failed_levels"] = list(self.failed_levels)
        return out


@attrs.frozen
class Outcome:
    """
    A caller's successful result.  ``coalesced_into`` names the operation
    whose execution this caller joined (None when it ran its own).
    """

    operation_id: str
    action: Action
    state: PowerState
    agent: str | None = None
    coalesced_into: str | None = None
    #: :meth:`Observed.detail` of the execution (level, devices, warning)
    detail: dict | None = attrs.field(default=None, hash=False)


class IPowerAction(Interface):
    """One caller's power request and the Deferred that caller waits on."""

    node = Attribute("Name of the node.")
    action = Attribute("The :class:`~powerctl.power.Action`.")
    operation_id = Attribute("The journal's id for this request.")
    deferred = Attribute("Fires exactly once with an Outcome or a failure.")
    coalesced_into = Attribute("Operation id this request joined, if any.")

    def cancel():
        """Withdraw this request; its Deferred fails with :class:`Cancelled`."""


# (make mutate: eq=True is equivalent: each action has its own Deferred,
# compared by identity, so two are never equal; none is hashed.)
@implementer(IPowerAction)
@attrs.define(eq=False)
class PowerAction:
    """
    A request.  Build one, hand it to ``PowerActionRegistry.submit`` and wait
    on ``deferred``; ``cancel()`` (or cancelling the Deferred) withdraws it.
    """

    node: str
    action: Action = attrs.field(converter=Action.parse)
    operation_id: str
    requester: str = ""
    # (make mutate: init=True on coalesced_into or _withdraw only lets the
    # constructor take one more optional argument; repr=True changes repr.)
    coalesced_into: str | None = attrs.field(default=None, init=False)
    deferred: defer.Deferred = attrs.field(init=False, repr=False)
    _withdraw: object = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self):
        self.deferred = defer.Deferred(canceller=self._cancelled)

    def _cancelled(self, d):
        if self._withdraw is None:
            d.errback(Cancelled(self.operation_id, "cancelled before submission"))
        else:
            self._withdraw(self)

    def cancel(self):
        if not self.deferred.called:
            self.deferred.cancel()


@attrs.frozen
class ActionInfo:
    """A snapshot of one action in play or waiting, for "what runs now"."""

    operation_id: str
    action: Action
    joined: tuple = ()
    started_at: float | None = None
    #: (The registry, its only constructor, always passes ``stopping``: make
    #: mutate's default True is equivalent.)
    stopping: bool = False
    #: when the request that leads it arrived (a waiting action's "since")
    queued_at: float | None = None


@attrs.frozen
class NodeActivity:
    """A snapshot of one node: the change in play, the one waiting, a query."""

    node: str
    running: ActionInfo | None = None
    waiting: ActionInfo | None = None
    query: ActionInfo | None = None
