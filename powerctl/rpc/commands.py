"""
Every AMP command and error spoken between a region and a pserv.

This module is the protocol's documentation: another region controller
that implements these commands can drive a pserv.

Connection life cycle (the pserv dials the region):

1. pserv → region ``Challenge``; region answers a random nonce.
2. pserv → region ``Authenticate`` with ``HMAC-SHA256(secret, nonce)`` and a
   nonce of its own; region answers ``HMAC-SHA256(secret, pserv_nonce)`` so
   the pserv knows the region holds the secret too.  Until this succeeds
   every other command, in either direction, fails with
   ``NotAuthenticated``; a wrong proof drops the connection.
3. pserv → region ``Register`` (cluster, pserv name, version).
4. pserv → region ``Recover`` page by page: the non-terminal operations of
   its cluster, then the desired state of every node, each page well under
   AMP's 64 KiB per value.
5. From then on: region → pserv ``PowerOn``/``PowerOff``/``PowerSoftOff``/
   ``PowerCycle``/``PowerQuery`` (acknowledged at once; the work happens
   later) and ``PowerMany`` (a page of a bulk request's operations at
   once), ``ForgetNode`` (deleted, moved or reconfigured), operator
   ``CancelOperation``/``ConfirmOperation`` and ``ListActions``/``ListSlots``
   (what runs and waits now); pserv → region ``ReportOutcomes`` (the
   outcomes of a batch of operations, including coalesced and superseded
   ones; ``ReportOutcome`` says one),
   ``ReportPowerState`` (poll results, batched), ``ReportLockout`` (BMC
   credentials refused too often) and ``Heartbeat``; region → pserv
   ``ClearLockout`` (an operator cleared one).

No command waits for a BMC: the slowest answer is a database write.

One bad box never costs the connection: every command may fail with
``BAD_ARGUMENTS`` (an argument missing or malformed) or ``INTERNAL_ERROR``
(a bug on the answering side, logged there with its traceback), and the
connection stays up.  Two exceptions, both before authentication: a wrong
``Authenticate`` proof, and a box with an argument missing, close it (the
region also closes a connection that has not authenticated within
``RegionProtocol.auth_timeout``, 10 s).
"""

import json

from twisted.protocols import amp

from powerctl.power import Action

#: Keep every JSON value comfortably below AMP's 65,535-byte value limit.
MAX_VALUE = 60_000


class JSON(amp.Argument):
    """A JSON document in one AMP value (so at most 64 KiB once encoded)."""

    def toString(self, obj):
        data = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")
        if len(data) > MAX_VALUE:
            raise amp.TooLong(False, True, b"json", None)
        return data

    def fromString(self, data):
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise BadArguments(f"malformed JSON argument: {e}") from None


# -- errors -----------------------------------------------------------------

class NotAuthenticated(Exception):
    """The peer has not proved it holds the shared secret."""


class AuthenticationFailed(Exception):
    """The proof of the shared secret was wrong."""


class BadArguments(Exception):
    """An argument is malformed or invalid (nothing was done)."""


class UnusablePowerConfig(Exception):
    """
    The pserv cannot use the node's power configuration (unknown driver,
    bad parameter): the operation was refused, nothing was sent to a device.
    """


class UnknownPserv(Exception):
    """A command that needs ``Register`` came before it."""


class LeaseExpired(Exception):
    """The pserv's lease is over: it must stop driving hardware and register again."""


class StaleEpoch(Exception):
    """The epoch given is not the node's owner's (a refused fencing token)."""


class InternalError(Exception):
    """
    The peer failed unexpectedly answering this command (a bug, logged
    there once with its traceback).  The connection stays up and usable;
    what the command did is unknown unless it is idempotent.
    """


#: What any box may fail with, even before authentication: a box with an
#: argument missing or malformed is ``BAD_ARGUMENTS`` (before authentication
#: the region then closes the connection), a bug is ``INTERNAL_ERROR``.  No
#: other error ever closes a connection except a wrong ``Authenticate``.
_BOX_ERRORS = {
    BadArguments: b"BAD_ARGUMENTS",
    InternalError: b"INTERNAL_ERROR",
}


_COMMON_ERRORS = {
    NotAuthenticated: b"NOT_AUTHENTICATED",
    **_BOX_ERRORS,
}


#: What a command that needs a registered, leased pserv may fail with.
_LEASED_ERRORS = {
    **_COMMON_ERRORS,
    UnknownPserv: b"UNKNOWN_PSERV",
    LeaseExpired: b"LEASE_EXPIRED",
    StaleEpoch: b"STALE_EPOCH",
}


# -- pserv → region ------------------------------------------------------------

class Challenge(amp.Command):
    """First command of a connection: returns a fresh random nonce."""

    arguments = []
    response = [(b"nonce", amp.Unicode())]
    errors = dict(_BOX_ERRORS)


class Authenticate(amp.Command):
    """Prove the secret: ``proof = hex(HMAC-SHA256(secret, nonce))``."""

    arguments = [
        (b"proof", amp.Unicode()),
        (b"nonce", amp.Unicode()),  # the pserv's challenge to the region
        # issue 10: the per-cluster credential proved (absent: the shared secret)
        (b"credential", amp.Unicode(optional=True)),
    ]
    response = [(b"proof", amp.Unicode())]
    errors = {AuthenticationFailed: b"AUTHENTICATION_FAILED", **_BOX_ERRORS}
    fatalErrors = {AuthenticationFailed: b"AUTHENTICATION_FAILED"}


class Register(amp.Command):
    """
    Who the pserv is.  Re-registering after a reconnect is normal.
    ``instance`` is random per pserv process: the process that already holds
    a live lease gets it renewed (same ``epoch``); any other gets a new
    lease under a new, larger epoch.  ``lease``: seconds left on it.
    """

    arguments = [
        (b"cluster", amp.Unicode()),
        (b"name", amp.Unicode()),
        (b"version", amp.Unicode()),
        (b"instance", amp.Unicode()),
    ]
    response = [(b"region", amp.Unicode()), (b"epoch", amp.Integer()),
                (b"lease", amp.Float())]
    # AUTHENTICATION_FAILED (fatal): the credential does not admit that cluster.
    errors = {**_COMMON_ERRORS, AuthenticationFailed: b"AUTHENTICATION_FAILED"}
    fatalErrors = {AuthenticationFailed: b"AUTHENTICATION_FAILED"}


class Recover(amp.Command):
    """
    One page of what the pserv must converge on.  Call with ``after_op=0``
    and ``after_node=""``, then with the cursors returned, until ``done``.
    ``operations``: ``[{"id", "node", "action", "power"}]`` (pending and
    running operations of the cluster, oldest first); ``nodes``:
    ``[{"name", "desired_state", "power", "lockouts"}]``; ``lockouts``
    (issue 10) lists the node's agents whose credentials are locked out,
    ``[{"agent", "id"}]``: a pserv drops a lock-out it holds that the listing
    no longer names, once the region had acknowledged it.  Both lists carry
    ``"circuit"`` (as in the power commands) for a node on a circuit.
    ``releasing`` (last page only; absent from an older region): up to
    ``RELEASING_PAGE`` names of nodes the lease owns that are marked for
    hand-over and not released yet.  A pserv releases them whether or not
    it knows them: one that learnt of a node only after it was marked (its
    refresh read the listing late) is not driving it, finds it in no
    "known before, not listed now" difference, and without this list never
    released it -- the next owner waited for good.

    Incremental recoveries (issue 14): the first page of every recovery
    carries ``cursor``; a later recovery called with ``changed_since`` set
    to it lists, of the nodes, only those whose configuration changed since
    (and every open operation, as always), and names in ``not_ours`` the
    changed nodes of the cluster this lease no longer drives (handed over).
    It says nothing of deleted nodes or nodes moved to another cluster: a
    full recovery (without ``changed_since``) stays the safety net.  A
    region without this ignores ``changed_since`` and sends no ``cursor``.
    """

    arguments = [
        (b"after_op", amp.Integer()),
        (b"after_node", amp.Unicode()),
        (b"changed_since", amp.Integer(optional=True)),
    ]
    response = [
        (b"operations", JSON()),
        (b"nodes", JSON()),
        (b"after_op", amp.Integer()),
        (b"after_node", amp.Unicode()),
        (b"done", amp.Boolean()),
        (b"releasing", JSON(optional=True)),
        (b"cursor", amp.Integer(optional=True)),
        (b"not_ours", JSON(optional=True)),
    ]
    errors = dict(_LEASED_ERRORS)


class ReportOutcome(amp.Command):
    """
    The end of one operation.  ``outcome``: ``succeeded``, ``failed``,
    ``superseded`` or ``cancelled``.  ``observed_state``: ``on``/``off`` or
    empty; ``coalesced_into``/``superseded_by``: operation ids or 0.
    ``error``: what went wrong, in words; ``error_kind`` (optional): its
    kind, the :attr:`~powerctl.drivers.errors.PowerError.kind` of the driver
    error (``auth``, ``unreachable``, ``timeout``, ...) or ``internal``, in
    a field of its own so no one parses it out of the text.
    ``epoch``: the lease the operation ran under; only the node's current
    owner may end an operation (``STALE_EPOCH`` otherwise, nothing
    written).  Idempotent: repeating a report changes nothing.
    ``detail`` (optional JSON object): what the power topology said beside
    the state -- the acting level, each device with the state it reported,
    a warning for a degraded success, the levels that failed before.
    """

    arguments = [
        (b"operation_id", amp.Integer()),
        (b"outcome", amp.Unicode()),
        (b"observed_state", amp.Unicode()),
        (b"agent", amp.Unicode()),
        (b"error", amp.Unicode()),
        (b"coalesced_into", amp.Integer()),
        (b"superseded_by", amp.Integer()),
        (b"epoch", amp.Integer()),
        (b"error_kind", amp.Unicode(optional=True)),
        (b"detail", JSON(optional=True)),
    ]
    response = [(b"recorded", amp.Boolean())]
    errors = dict(_LEASED_ERRORS)


class ReportOutcomes(amp.Command):
    """
    The ends of several operations at once (issue 14: one call and one
    transaction for a batch): ``reports`` = ``[{"operation_id", "outcome",
    "observed_state", "agent", "error", "error_kind", "detail",
    "coalesced_into", "superseded_by"}]`` (each field as in
    ``ReportOutcome``; all but ``operation_id`` and ``outcome`` may be
    left out), every one run under the lease ``epoch``.  The batch is
    recorded in one transaction; one report the region cannot take
    (malformed, not its owner's, about an unknown operation) is left out
    and named in ``refused`` (``[{"operation_id", "code", "why"}]``,
    ``code`` ``BAD_ARGUMENTS``, ``STALE_EPOCH`` or ``UNKNOWN``) without
    costing the others.  ``recorded``: how many reports changed the
    journal.  A sender keeps each call within one AMP value (pages).
    """

    arguments = [(b"reports", JSON()), (b"epoch", amp.Integer())]
    response = [(b"recorded", amp.Integer()), (b"refused", JSON())]
    errors = dict(_LEASED_ERRORS)


class ReportPowerState(amp.Command):
    """
    Poll results: ``states`` = ``[{"node", "state", "error", "error_kind"}]``
    (``error_kind`` as in ``ReportOutcome``, optional), polled
    under the lease ``epoch``; states of nodes that epoch does not own are
    dropped (logged once).
    """

    arguments = [(b"states", JSON()), (b"epoch", amp.Integer())]
    response = []
    errors = dict(_LEASED_ERRORS)


class Heartbeat(amp.Command):
    """
    I am alive, with this many actions in play or waiting: renews the
    lease, answering the seconds ``lease`` left on it.  ``LEASE_EXPIRED``:
    too late, the pserv must go quiet and register again.
    """

    arguments = [(b"actions_in_flight", amp.Integer())]
    response = [(b"lease", amp.Float())]
    # AUTHENTICATION_FAILED (fatal): the pserv's credential was revoked.
    errors = {**_LEASED_ERRORS, AuthenticationFailed: b"AUTHENTICATION_FAILED"}
    fatalErrors = {AuthenticationFailed: b"AUTHENTICATION_FAILED"}


class ReleaseNodes(amp.Command):
    """
    The pserv stopped driving ``nodes`` (``["name"]``) that the region asked
    it to hand over (they were no longer in its ``Recover``): they go to
    their new owner.  ``released``: the names handed over.
    """

    arguments = [(b"nodes", JSON())]
    response = [(b"released", JSON())]
    errors = dict(_LEASED_ERRORS)


class ReportLockout(amp.Command):
    """
    Issue 10, no BMC lock-outs: the credentials of ``node``'s agent
    ``agent`` (its index in the power configuration) were refused
    ``failures`` times (``reason`` in words) and the pserv stopped trying
    them.  The region keeps the lock-out and sends it with the node's
    configuration (``Recover``, power commands) to whichever pserv drives
    the node, until the credentials change or an operator clears it.
    ``digest`` is the SHA-256 of the node's power configuration as the pserv
    drives it (its canonical JSON): a report about credentials the node no
    longer has is dropped (``recorded`` false).  ``epoch``: the reporting
    pserv's lease, which must own the node (``STALE_EPOCH`` otherwise).
    ``id``: the lock-out's id in the region (0 when not recorded).
    """

    arguments = [
        (b"node", amp.Unicode()),
        (b"agent", amp.Integer()),
        (b"failures", amp.Integer()),
        (b"reason", amp.Unicode()),
        (b"digest", amp.Unicode()),
        (b"epoch", amp.Integer()),
    ]
    response = [(b"recorded", amp.Boolean()), (b"id", amp.Integer())]
    errors = dict(_LEASED_ERRORS)


class ReleaseLease(amp.Command):
    """A pserv stopping cleanly, quiet: its lease ends now, its nodes are free at once."""

    arguments = []
    response = []
    errors = dict(_LEASED_ERRORS)


# -- region → pserv --------------------------------------------------------

class _PowerCommand(amp.Command):
    """
    Start a power operation.  ``power`` is the node's resolved power
    configuration (``{"levels": [{"agents": [{"driver", "params"}]}]}``, or the
    flat ``{"mode", "agents"}``).  The
    answer comes at once: ``disposition`` is ``started``, ``waiting``,
    ``coalesced`` (then ``coalesced_into`` names the operation joined) or
    ``known`` (this operation id is already in play here).  ``epoch`` is
    the node's owner's lease: a pserv whose lease it is not refuses with
    ``STALE_EPOCH`` and does nothing.  ``circuit`` (optional): the
    electrical circuit the node is on and its budget, ``{"name", "max_on",
    "spacing"}`` (``max_on`` null: no budget); the pserv keeps one budget
    per circuit for the power-ons it sends.
    """

    action = None
    arguments = [
        (b"operation_id", amp.Integer()),
        (b"node", amp.Unicode()),
        (b"power", JSON()),
        (b"epoch", amp.Integer()),
        # issue 10: the node's agents locked out, [{"agent", "id"}] (absent: none)
        (b"lockouts", JSON(optional=True)),
        (b"circuit", JSON(optional=True)),
    ]
    response = [
        (b"disposition", amp.Unicode()),
        (b"coalesced_into", amp.Integer()),
    ]
    errors = {**_COMMON_ERRORS, UnusablePowerConfig: b"INVALID_POWER_CONFIG",
              StaleEpoch: b"STALE_EPOCH"}


class PowerOn(_PowerCommand):
    action = Action.ON.value


class PowerOff(_PowerCommand):
    action = Action.OFF.value


class PowerSoftOff(_PowerCommand):
    action = Action.SOFT_OFF.value


class PowerCycle(_PowerCommand):
    action = Action.CYCLE.value


class PowerQuery(_PowerCommand):
    action = Action.QUERY.value


class PowerFence(_PowerCommand):
    """
    A fence: succeeds only once a query proved the node off on every device
    of the acting level.  A node none of whose levels can prove it is
    refused (``INVALID_POWER_CONFIG``).
    """

    action = Action.FENCE.value


class PowerMany(amp.Command):
    """
    Start several power operations at once (a bulk request, issue 14):
    ``operations`` = ``[{"id", "node", "action", "power", "lockouts",
    "circuit"}]`` (each as the arguments of the single power commands;
    ``lockouts`` and ``circuit`` optional), all under the owner's lease
    ``epoch`` (``STALE_EPOCH`` for the whole call when it is not the
    pserv's: nothing started).  ``fence`` is never sent this way (a fence
    is requested and dispatched node by node).  ``results`` answers each
    operation in order: ``{"id", "disposition", "coalesced_into",
    "refused", "error"}``; ``refused`` is ``INVALID_POWER_CONFIG`` (nothing
    sent to the device, ``error`` says why) or empty.  A sender pages the
    operations so each call fits one AMP value.
    """

    arguments = [(b"operations", JSON()), (b"epoch", amp.Integer())]
    response = [(b"results", JSON())]
    errors = {**_COMMON_ERRORS, StaleEpoch: b"STALE_EPOCH"}


POWER_COMMANDS = {c.action: c for c in (
    PowerOn, PowerOff, PowerSoftOff, PowerCycle, PowerQuery, PowerFence)}


class NotConfirmable(Exception):
    """A manual confirmation that cannot apply here (the message says why)."""


class ForgetNode(amp.Command):
    """
    Stop driving ``node``: it was deleted, moved to another cluster, or its
    power configuration changed.  Everything in play or waiting for it is
    cancelled with ``reason``; the answer comes once the device is quiet
    (bounded by the pserv's cancel timeout) and the pserv has forgotten
    the node's configuration, so it is neither polled nor driven with the
    old credentials again.  Unknown nodes are fine (nothing to do).
    """

    arguments = [(b"node", amp.Unicode()), (b"reason", amp.Unicode())]
    response = [(b"cancelled", JSON())]  # ids of the operations that ended cancelled
    errors = dict(_COMMON_ERRORS)


class ClearLockout(amp.Command):
    """
    An operator cleared ``node``'s lock-out (issue 10): the pserv may try
    its credentials again (each agent's failures counted afresh).  Unknown
    nodes are fine (nothing to do).
    """

    arguments = [(b"node", amp.Unicode())]
    response = []
    errors = dict(_COMMON_ERRORS)


class Refresh(amp.Command):
    """
    Ownership changed in the pserv's cluster: page through ``Recover`` now
    (take up nodes and operations newly ours, hand over the others)
    instead of at the next poll round.  Answered at once.
    """

    arguments = []
    response = []
    errors = dict(_COMMON_ERRORS)


class CancelOperation(amp.Command):
    """
    An operator cancels one operation.  Answers once it is settled: when it
    alone held the action in play, after the device is quiet.  ``known``
    is false when this pserv does not have the operation; otherwise
    ``outcome`` says how it ended (``cancelled``, or ``succeeded``/
    ``failed``/``superseded`` when it ended before it could be cancelled).
    The outcome is also reported with ``ReportOutcome`` as usual.
    """

    arguments = [(b"operation_id", amp.Integer()), (b"reason", amp.Unicode())]
    response = [(b"known", amp.Boolean()), (b"outcome", amp.Unicode())]
    errors = dict(_COMMON_ERRORS)


class ConfirmOperation(amp.Command):
    """
    An operator confirms a ``manual`` operation: the node is now ``state``
    (``on``/``off``).  ``confirmed`` counts the manual agents confirmed.
    ``NOT_CONFIRMABLE`` (with the reason) when the operation is not the
    one in play here, no manual agent waits, or ``state`` is not what
    the action leads to.
    """

    arguments = [(b"operation_id", amp.Integer()), (b"state", amp.Unicode())]
    response = [(b"confirmed", amp.Integer())]
    errors = {**_COMMON_ERRORS, NotConfirmable: b"NOT_CONFIRMABLE"}


class EncodedJSON(JSON):
    """:class:`JSON` that the sender may also hand over encoded already (bytes)."""

    def toString(self, obj):
        if not isinstance(obj, bytes):
            return super().toString(obj)
        if len(obj) > MAX_VALUE:
            raise amp.TooLong(False, True, b"json", None)
        return obj


class ListActions(amp.Command):
    """
    What is in play and waiting on this pserv, a page at a time, in node
    order: call with ``after_node=""``, then with the last node of each
    page, until ``done``.  ``limit`` is capped at 200 nodes, and a page is
    cut shorter when it would not fit one AMP value.  The first page of a
    walk takes a snapshot of the registry that the following pages read
    (for a few seconds), so a walk is consistent and cheap.  ``node``
    (optional) asks about that one node only.

    ``nodes``: ``[{"node", "running", "waiting", "query"}]`` where each is
    null or ``{"operation_id", "action", "joined", "joined_total",
    "started_at", "stopping"}``: ``joined`` lists (at most 50 of) the
    operations that coalesced into it, ``joined_total`` counts them all;
    ``started_at`` is the pserv clock's time when it started (null while it
    waits); ``stopping`` is true once it was superseded or cancelled and the
    device is not quiet yet.  ``now`` is the pserv clock's time of the
    answer, so that ages need no synchronised clocks.
    """

    arguments = [(b"after_node", amp.Unicode()), (b"limit", amp.Integer()),
                 (b"node", amp.Unicode(optional=True))]
    response = [(b"nodes", EncodedJSON()), (b"done", amp.Boolean()),
                (b"now", amp.Float(optional=True))]
    errors = dict(_COMMON_ERRORS)


class ListSlots(amp.Command):
    """
    The pserv's priority slots (``max_actions``): ``size`` (0 when the
    pserv runs without slots), ``busy``, ``waiting`` (how many actions wait
    for a slot, in all), ``holding`` (the actions in a slot: ``[{"node",
    "operation_id", "action", "priority", "since"}]``, cut short if it
    would not fit one AMP value) and one page of
    ``queue``: the waiters in the order they will be served (most urgent
    first, then by arrival), ``[{"node", "operation_id", "action",
    "priority", "since", "seq", "position"}]`` (``position`` in the whole
    queue, from 1).  ``since`` is the pserv clock's time
    when it began to wait (or got its slot); ``now`` the time of the
    answer.  Start with ``after_seq=-1``; then pass the ``priority`` and
    ``seq`` of the last entry, until ``done``.  At most ``limit`` (capped at
    200) entries a page; ``node`` (optional) keeps that node's entries only.
    """

    arguments = [(b"after_priority", amp.Integer()), (b"after_seq", amp.Integer()),
                 (b"limit", amp.Integer()), (b"node", amp.Unicode(optional=True))]
    response = [(b"size", amp.Integer()), (b"busy", amp.Integer()),
                (b"waiting", amp.Integer()), (b"holding", EncodedJSON()),
                (b"queue", EncodedJSON()),
                (b"done", amp.Boolean()), (b"now", amp.Float())]
    errors = dict(_COMMON_ERRORS)
