"""
The pserv's brain, free of any connection: accepts operations from a
region, runs them through the registry, and hands every outcome -- by
operation id -- to whoever reports to the region.

Operation ids are remembered while in play and for a while after they
finish, so that a region that re-sends an operation (after its own restart,
or because our report was lost with the connection) gets the known outcome
again instead of the hardware being driven twice.
"""

import collections

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from powerctl.drivers.errors import PowerError
from powerctl.power import Action, OpState
from powerctl.powerdoc import InvalidPowerDocument
from powerctl.registry import Cancelled, Outcome, PowerAction, Superseded


class NotConfirmable(Exception):
    """A manual confirmation that cannot apply; says why."""


class NotOurs(Exception):
    """An operation sent under an epoch that is not our lease's: refused, nothing done."""


@attrs.frozen
class Report:
    """
    What ``ReportOutcome`` carries for one operation (see the glossary of
    result types in :mod:`powerctl.power`).
    """

    operation_id: int
    outcome: str  # one of powerctl.power.TERMINAL_STATES
    observed_state: str = ""
    agent: str = ""
    error: str = ""
    coalesced_into: int = 0
    superseded_by: int = 0
    #: the lease the operation ran under (the region refuses other epochs)
    epoch: int = 0
    #: what kind of failure ``error`` is (a driver error's ``kind``, or
    #: ``internal``), sent in a field of its own; empty unless failed
    error_kind: str = ""
    #: what the topology said beside the state (level, devices, warning), or None
    detail: dict | None = attrs.field(default=None, hash=False)


def report_for(action, result):
    """Translate an action's final result into a :class:`Report`."""
    op = int(action.operation_id)
    if isinstance(result, Outcome):
        return Report(op, OpState.SUCCEEDED.value, result.state.value, result.agent or "",
                      coalesced_into=int(result.coalesced_into or 0), detail=result.detail)
    error = result.value if isinstance(result, Failure) else result
    if isinstance(error, Superseded):
        return Report(op, OpState.SUPERSEDED.value, superseded_by=int(error.by))
    if isinstance(error, Cancelled):
        return Report(op, OpState.CANCELLED.value, error=error.reason)
    kind = getattr(error, "kind", None) if isinstance(error, PowerError) else "internal"
    detail = error.detail() if callable(getattr(error, "detail", None)) else None
    return Report(op, OpState.FAILED.value, error=str(error), error_kind=kind or "",
                  coalesced_into=int(action.coalesced_into or 0), detail=detail)


def _circuit_kw(circuit):
    """``circuit=`` for the executor only when there is one (executors without circuits)."""
    return {"circuit": circuit} if circuit else {}


class Pserv:
    """Operations in, outcomes out.  ``report(Report)`` is called once per op."""

    log = Logger()

    def __init__(self, registry, executor, report, remember=10_000):
        self.registry = registry
        self.executor = executor
        self._report = report
        self._in_play = {}  # op id -> PowerAction
        self._finished = collections.OrderedDict()  # op id -> Report
        self._keep = remember
        self._newest = {}  # node -> the newest changing operation accepted for it
        self._stopping = False
        self._settled = {}  # op id -> [Deferred] waiting for its report (cancel)
        self._unreported = set()  # op ids whose cancellation is not theirs to report
        self._epochs = {}  # op id -> the epoch it runs under
        self._forget_watchers = []  # sets of nodes forgotten while a recovery reads
        #: The epoch of our lease; None while we hold none (then nothing is
        #: accepted: we must not drive hardware).
        self.epoch = None

    def shutdown(self):
        """
        Cancel everything for a process stop.  Those cancellations are not
        reported: the operations are not over, and the region hands them
        out again when a pserv (re)connects.
        """
        self._stopping = True
        self.registry.cancel_all("pserv shutting down")

    def go_quiet(self, reason):
        """
        Our lease is ending (or ended): cancel everything without reporting
        -- the operations are not over, their next owner runs them -- and
        forget every node.  Fires once every device is quiet.
        """
        self.epoch = None
        self._unreported.update(self._in_play)

        def forget(_):
            for node in self.executor.known_nodes():
                if not self.registry.busy(node):
                    self.executor.forget(node)

        return self.registry.cancel_all(reason).addCallback(forget)

    def dispatch(self, operation_id, node, action, power, epoch=None, lockouts=None,
                 circuit=None):
        """
        Accept one operation; returns ``(disposition, coalesced_into)`` at
        once.  ``circuit``: the node's circuit and budget, as the region
        sends it (None: none).  Raises :class:`InvalidPowerDocument` (nothing started) for a bad
        power configuration, :class:`NotOurs` when ``epoch`` (default: ours)
        is not the epoch of the lease we hold.
        """
        operation_id = int(operation_id)
        epoch = self.epoch if epoch is None else epoch
        if self.epoch is None or epoch != self.epoch:
            raise NotOurs(f"operation {operation_id} for {node} under epoch {epoch}: "
                          f"our lease is {self.epoch}")
        if operation_id in self._in_play:
            return "known", 0
        if operation_id in self._finished:
            # The region lost our report and hands the operation out again.
            # Answer from memory under the epoch it hands it out under: that
            # is our current lease (checked above) and the region refuses any
            # other.  Kept under the lease it finished under, a report lost
            # while that lease lapsed (refused while PostgreSQL was down, or
            # flushed from the outbox after we registered again) would be
            # refused at every re-dispatch and the operation would stay open
            # in the journal for good.  Only outcomes of work this process
            # did are remembered (cancellations on going quiet are not).
            report = attrs.evolve(self._finished[operation_id], epoch=int(epoch))
            self._finished[operation_id] = report
            self._report(report)
            return "known", 0
        if Action.parse(action).changes_power:
            # (Operation ids come from the journal's bigserial, 1 and up: any
            # default below 2 supersedes nothing, so make mutate's 0 -> +-1
            # is equivalent.)
            newest = self._newest.get(node, 0)
            if operation_id < newest:
                # An older request reached us after a newer one for the node
                # (a Recover listing racing the NOTIFY of a new request).  In
                # journal order the newer one replaces it, and the last
                # request must win: it is superseded without running.
                self._remember(Report(operation_id, OpState.SUPERSEDED.value,
                                      superseded_by=newest, epoch=int(epoch)))
                return "known", 0
            self._newest[node] = operation_id
        self._configure(node, power, lockouts, circuit=circuit)
        if Action.parse(action) is Action.FENCE:
            refusal = self.executor.fence_refusal(node)
            if refusal is not None:  # nothing is sent to any device
                raise InvalidPowerDocument(str(refusal))
        request = PowerAction(node=node, action=action, operation_id=str(operation_id))
        self._in_play[operation_id] = request
        self._epochs[operation_id] = epoch
        d = self.registry.submit(request)
        d.addBoth(self._done, request)
        if request.coalesced_into is not None:
            return "coalesced", int(request.coalesced_into)
        activity = self.registry.activity(node)
        # (activity(node) lists one node at most: make mutate's [-1] is equivalent.)
        if activity and activity[0].waiting and activity[0].waiting.operation_id == str(operation_id):
            return "waiting", 0
        return "started", 0

    def _done(self, result, request):
        report = report_for(request, result)
        op = report.operation_id
        # (dispatch records every operation's epoch, and epochs start at 1:
        # the fallback is never used, so make mutate's 0 -> +-1 is equivalent.)
        report = attrs.evolve(report, epoch=int(self._epochs.pop(op, None) or 0))
        self._in_play.pop(op, None)
        unreported = op in self._unreported
        self._unreported.discard(op)
        if report.outcome == OpState.CANCELLED and (self._stopping or unreported):
            for waiter in self._settled.pop(op, []):
                waiter.callback(report)
            return None
        self._remember(report)
        return None

    def _remember(self, report):
        """Keep ``report`` (for a re-dispatch), settle its waiters, send it."""
        op = report.operation_id
        self._finished[op] = report
        while len(self._finished) > self._keep:
            self._finished.popitem(last=False)
        for waiter in self._settled.pop(op, []):
            waiter.callback(report)
        try:
            self._report(report)
        except Exception:
            self.log.failure("reporting outcome of operation {op}", op=op)

    def in_flight(self):
        return len(self._in_play)

    def watch_forgets(self):
        """
        A set that collects every node forgotten from now on, until
        :meth:`unwatch_forgets`.  A recovery reads the region's listing
        over several round trips; a node deleted meanwhile must not be
        learnt again from a listing read before the delete.
        """
        forgotten = set()
        self._forget_watchers.append(forgotten)
        return forgotten

    def unwatch_forgets(self, forgotten):
        self._forget_watchers.remove(forgotten)

    def forget_node(self, node, reason, report=True):
        """
        Stop driving ``node`` (deleted, moved away, or given a new power
        configuration): cancel its work with ``reason``, and once the device
        is quiet forget its configuration, so the poller leaves it alone
        and nothing ever runs with the old credentials.  Fires once quiet
        (the registry bounds the wait by its ``cancel_timeout``) with the
        ids of the operations that ended cancelled.  With ``report=False``
        (a hand-over to another pserv) the cancellations are not reported:
        those operations are not over, their next owner runs them.
        """
        for forgotten in self._forget_watchers:
            forgotten.add(node)
        ops = [op for op, request in self._in_play.items() if request.node == node]
        if not report:  # a hand-over: the operations go on with the next owner
            self._unreported.update(ops)
        d = self.registry.cancel_node(node, reason)

        def forget(_):
            if not self.registry.busy(node):  # a new dispatch may have come meanwhile
                self.executor.forget(node)
            return [op for op in ops if op in self._finished
                    and self._finished[op].outcome == OpState.CANCELLED]

        return d.addCallback(forget)

    def cancel(self, operation_id, reason):
        """
        An operator cancels one operation.  Returns a Deferred firing with
        its final :class:`Report` -- ``cancelled`` once the device is quiet,
        or how it ended if it could no longer be cancelled -- or None when
        this pserv does not have the operation in play.
        """
        operation_id = int(operation_id)
        request = self._in_play.get(operation_id)
        if request is None:
            finished = self._finished.get(operation_id)
            return defer.succeed(finished) if finished is not None else None
        waiter = defer.Deferred()
        self._settled.setdefault(operation_id, []).append(waiter)
        self.registry.cancel_action(request, reason)
        return waiter

    def confirm(self, operation_id, state):
        """
        An operator confirms that the manual action of ``operation_id`` was
        done and the node is now ``state``.  Raises :class:`NotConfirmable`
        saying why when it cannot be (not in play here, not the action the
        node is waiting on, no manual agent waiting, a different state).
        """
        request = self._in_play.get(int(operation_id))
        if request is None:
            raise NotConfirmable(f"operation {operation_id} is not in play on this pserv")
        [activity] = self.registry.activity(request.node) or [None]
        running = activity.running if activity is not None else None
        if running is None or str(operation_id) not in (running.operation_id,) + running.joined:
            raise NotConfirmable(
                f"operation {operation_id} waits for another action of {request.node} to end")
        confirmed = 0
        for driver in self.executor.drivers(request.node):
            confirm = getattr(driver, "confirm", None)
            if confirm is None:
                continue
            try:
                confirm(state)
                confirmed += 1
            except KeyError:
                continue  # this agent is not waiting (already confirmed)
            except ValueError as e:
                raise NotConfirmable(str(e)) from None
        if not confirmed:
            raise NotConfirmable(f"no manual agent of {request.node} waits for a confirmation")
        return confirmed

    def _configure(self, node, power, lockouts=None, since=None, circuit=None):
        """
        The executor learns ``node``'s configuration, its lock-outs (issue
        10) and its circuit (issue 13); executors without lock-outs or
        circuits are not handed those arguments.
        """
        extra = _circuit_kw(circuit)
        if lockouts is not None:
            extra["lockouts"] = lockouts
        if since is not None:
            extra["since"] = since
        self.executor.configure(node, power, **extra)

    def configure(self, node, power, lockouts=None, since=None, circuit=None):
        """
        Learn a node's power configuration (recovery); False if invalid.
        ``lockouts``/``since``/``circuit``: see :meth:`DriverExecutor.configure`.
        """
        try:
            self._configure(node, power, lockouts, since, circuit)
            return True
        except InvalidPowerDocument as e:
            self.log.warn("node {node}: unusable power configuration: {why}", node=node, why=e)
            return False
