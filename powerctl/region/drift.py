"""
Reconciliation: what one poll of a node says about *drift*.

Every poll compares the state it observed with the node's desired state.
A mismatch while no operation of the node is open is drift: someone or
something changed the node behind powerctl's back (a power button, a BMC
policy, a PDU outlet switched by hand).  It is recorded on the node (since
when, what was observed, on how many consecutive polls) and the cluster's
policy says what happens next:

``report`` (the default)
    Drift is only shown: node JSON ``drift``, ``powerctl node list/show``,
    the status page and the ``powerctl_nodes_drifted`` gauge.
``enforce``
    Once the drift was seen on :data:`ENFORCE_AFTER_POLLS` consecutive
    polls, an ordinary journalled operation (``on`` or ``off``, to the
    desired state) is requested by ``reconcile`` and dispatched, like
    Ironic's ``force_power_state_during_sync``.

The rules, all decided by :func:`assess` without any I/O:

* A node whose desired state is unknown (NULL: never asked) never drifts.
* While an operation of the node is open (pending or running) there is no
  drift: the node is on its way, and a new request clears any drift.
* A poll that could not observe ``on`` or ``off`` (it failed, or read
  ``error`` or ``unknown``) neither starts nor counts drift: a node the
  pserv cannot reach is non-responsive, not drifted.  It keeps what was
  recorded while the node is still responsive, and clears it once the node
  is non-responsive.  So "consecutive" counts conclusive polls.
* Drift clears when a poll observes the desired state.
* Enforcement never storms: at most one operation is open per node (no
  reconcile while any operation is open), and it waits for a second
  consecutive poll, so an operator who just pressed the button has a poll
  interval to say what they want.  It stops (the drift is still reported)
  while the node's last power-changing operation was cancelled (an
  operator stopped it: not fought) or while its last
  :data:`MAX_RECONCILE_ATTEMPTS` power-changing operations were all
  ``reconcile`` ones that did not succeed (like Ironic's
  ``power_state_sync_max_retries``); any new request starts afresh.
"""

import attrs

from powerctl.power import TARGET_STATES, OpState

#: Consecutive conclusive polls showing the same drift before ``enforce``
#: requests a reconcile operation.
ENFORCE_AFTER_POLLS = 2

#: Unsuccessful reconcile operations in a row after which enforcement stops
#: until someone makes a request.
MAX_RECONCILE_ATTEMPTS = 3

#: Who requests the operations that enforcement creates.
RECONCILE_REQUESTER = "reconcile"

POLICIES = ("report", "enforce")
DEFAULT_POLICY = "report"
OBSERVABLE = TARGET_STATES


@attrs.frozen
class Observation:
    """
    What :func:`assess` needs to know about one poll of one node.

    :param desired: the node's desired state (``"on"``, ``"off"`` or None).
    :param observed: the state the poll reported.
    :param failed: whether the poll failed (an error, or ``error`` read).
    :param responsive: whether the node is responsive after this poll.
    :param open_op: whether an operation of the node is pending or running.
    :param drift_since: when the recorded drift started (None: no drift).
    :param drift_observed: the state the recorded drift observed.
    :param drift_polls: on how many consecutive polls it was seen.
    :param policy: the cluster's drift policy.
    :param recent_ops: the node's last power-changing operations, newest
        first, as ``(requester, state)`` pairs; at least
        :data:`MAX_RECONCILE_ATTEMPTS` of them when there are that many.
    :param now: the time to record as ``drift_since`` when drift starts.
    """

    desired: object
    observed: str
    failed: bool = False
    responsive: bool = True
    open_op: bool = False
    drift_since: object = None
    drift_observed: object = None
    drift_polls: int = 0
    policy: str = DEFAULT_POLICY
    recent_ops: tuple = ()
    now: object = None


@attrs.frozen
class Verdict:
    """
    The node's drift fields after the poll, and what to enforce: ``enforce``
    is the action (``"on"``/``"off"``) to request, or None.  ``suspended``
    says why enforcement held back although the policy asked for it.
    """

    since: object = None
    observed: object = None
    polls: int = 0
    enforce: object = None
    suspended: object = None

    @property
    def drifted(self):
        return self.since is not None


NO_DRIFT = Verdict()


def suspended(recent_ops):
    """
    Why enforcement must hold back given the node's last power-changing
    operations (newest first), or None.
    """
    recent = list(recent_ops)
    if recent and recent[0][1] == OpState.CANCELLED:
        return "its last operation was cancelled"
    tail = recent[:MAX_RECONCILE_ATTEMPTS]
    if len(tail) == MAX_RECONCILE_ATTEMPTS and all(
            requester == RECONCILE_REQUESTER and state in (OpState.FAILED, OpState.CANCELLED)
            for requester, state in tail):
        return f"{MAX_RECONCILE_ATTEMPTS} reconcile operations in a row did not succeed"
    return None


def assess(obs):
    """The :class:`Verdict` for one poll (:class:`Observation`)."""
    if obs.desired is None or obs.open_op:
        return NO_DRIFT
    recorded = Verdict(obs.drift_since, obs.drift_observed,
                       obs.drift_polls) if obs.drift_since is not None else NO_DRIFT
    if obs.failed or obs.observed not in OBSERVABLE:
        return recorded if obs.responsive else NO_DRIFT
    if obs.observed == obs.desired:
        return NO_DRIFT
    if recorded.drifted and recorded.observed == obs.observed:
        since, polls = recorded.since, max(recorded.polls, 0) + 1
    else:
        if obs.now is None:
            raise ValueError("drift starts now: Observation.now is needed")
        since, polls = obs.now, 1
    enforce = why = None
    if obs.policy == "enforce" and polls >= ENFORCE_AFTER_POLLS:
        why = suspended(obs.recent_ops)
        if why is None:
            enforce = obs.desired
    return Verdict(since, obs.observed, polls, enforce, why)


def as_json(since, observed, desired, polls):
    """A node's ``drift`` as the API shows it: None, or since/observed/desired/polls."""
    if since is None:
        return None
    return {"since": since, "observed": observed, "desired": desired, "polls": polls}
