"""
The per-node power-action registry: the rules below, in one object.

Per node the registry holds at most three *jobs* -- the change in play,
one change waiting, and one query -- where a job is one execution shared
by every request that coalesced into it:

1. at most one changing job is in play (running, or stopping after being
   superseded) per node;
2. a request identical to the waiting job, or to the job in play when
   nothing waits, joins it and gets the same outcome;
3. a request that outranks the job in play (per the :class:`IRankPolicy`)
   cancels it, waits until the executor says the device is quiet again
   (bounded by ``cancel_timeout``), then runs;
4. any other change waits, replacing -- superseding -- whatever waited;
5. queries never touch changes and join each other;
6. every request's Deferred fires exactly once.

The registry does no I/O: an :class:`IActionExecutor` does the work, so
the rules are tested with a fake executor and a ``Clock``.
"""

import attrs
from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.logger import Logger
from zope.interface import Interface

from powerctl.registry.actions import (
    ActionInfo, Cancelled, NodeActivity, Observed, Outcome, Superseded,
)
from powerctl.registry.policy import RankPolicy


class IActionExecutor(Interface):
    """Does the work of a power action (the pserv binds it to drivers)."""

    def execute(action):
        """
        Run ``action`` (an IPowerAction).  Returns a Deferred firing with an
        :class:`Observed` (or a PowerState); cancelling it stops the work.
        """

    def quiesced(action):
        """
        A Deferred firing once nothing of a cancelled ``action`` still runs
        against the hardware (a thread, a session, a half-sent command).
        """


# (_Job and _Node are only compared by identity: make mutate's eq=True on
# either is equivalent.)
@attrs.define(eq=False)
class _Job:
    """One execution and the requests sharing it; ``leader`` started it."""

    leader: object
    members: list = attrs.Factory(list)
    execution: defer.Deferred | None = None
    queued_at: float | None = None
    started_at: float | None = None
    #: Set when the job is being stopped: a function of an action that
    #: builds the exception its caller gets (Superseded or Cancelled).
    stopping: object = None

    @property
    def action(self):
        return self.leader.action

    def info(self):
        return ActionInfo(
            operation_id=self.leader.operation_id,
            action=self.leader.action,
            joined=tuple(m.operation_id for m in self.members if m is not self.leader),
            started_at=self.started_at,
            stopping=self.stopping is not None,
            queued_at=self.queued_at,
        )


# (make mutate: without the decorator, the class-level None defaults
# behave the same; an equivalent mutant.)
@attrs.define(eq=False)
class _Node:
    current: _Job | None = None
    waiting: _Job | None = None
    query: _Job | None = None

    def idle(self):
        return self.current is None and self.waiting is None and self.query is None


class PowerActionRegistry:
    """
    The registry of power actions of many nodes.  Build one per pserv and
    pass it in; nothing about it is global.
    """

    log = Logger()

    # (The pserv always passes its STOP_TIMEOUT: make mutate's +-1 on the
    # cancel_timeout default is equivalent.)
    def __init__(self, executor, clock, policy=None, cancel_timeout=30.0):
        self._executor = executor
        self._clock = clock
        self._policy = policy if policy is not None else RankPolicy()
        self._cancel_timeout = cancel_timeout
        self._nodes = {}
        self._idle_waiters = {}  # node -> [Deferred] fired once it is idle

    # -- requests ---------------------------------------------------------

    def submit(self, action):
        """
        Submit an :class:`IPowerAction`; returns its Deferred.  Never
        raises for a valid action: the outcome, whatever it is, arrives on
        the Deferred.
        """
        if action._withdraw is not None or action.deferred.called:
            raise ValueError(f"operation {action.operation_id} was already submitted")
        action._withdraw = self._withdraw
        node = self._nodes.setdefault(action.node, _Node())
        if action.action.changes_power:
            self._submit_change(node, action)
        else:
            self._submit_query(node, action)
        return action.deferred

    def _submit_query(self, node, action):
        if node.query is not None:
            self._join(node.query, action)
        else:
            node.query = self._new_job(action)
            self._start(action.node, node.query)

    def _submit_change(self, node, action):
        waiting, current = node.waiting, node.current
        if waiting is not None and waiting.action == action.action:
            self._join(waiting, action)
            return
        if current is not None and current.stopping is None and current.action == action.action:
            # Whatever waited would now run *after* this request: it is
            # older than this request, so it is superseded by it.
            if waiting is not None:
                node.waiting = None
                self._supersede_waiting(waiting, action.operation_id)
            self._join(current, action)
            return
        job = self._new_job(action)
        if current is None:
            node.current = job
            self._start(action.node, job)
            return
        if waiting is not None:
            self._supersede_waiting(waiting, action.operation_id)
        node.waiting = job
        if current.stopping is None and self._policy.outranks(action.action, current.action):
            by = action.operation_id
            self._stop(action.node, current, lambda a: Superseded(a.operation_id, by))

    def cancel_node(self, node_name, reason="cancelled", by=None):
        """
        Cancel everything in play or waiting for a node (deletion, a new
        power configuration).  Returns :meth:`idle`: a Deferred firing once
        nothing of the node runs on the device any more.
        """
        node = self._nodes.get(node_name)
        if node is None:
            return defer.succeed(None)
        idle = self.idle(node_name)
        fail = lambda a: Cancelled(a.operation_id, reason, by)  # noqa: E731
        if node.waiting is not None:
            waiting, node.waiting = node.waiting, None
            self._settle_all(waiting.members, fail)
        for job in (node.current, node.query):
            if job is not None and job.stopping is None:
                self._stop(node_name, job, fail)
        return idle

    def cancel_all(self, reason="shutting down"):
        """
        Cancel every action of every node (pserv shutdown, a lost lease);
        fires once every node is idle.
        """
        idle = [self.cancel_node(name, reason) for name in list(self._nodes)]
        return defer.DeferredList(idle).addCallback(lambda _: None)

    def cancel_action(self, action, reason="cancelled", by=None):
        """
        An operator cancels one request.  When it alone holds the job in
        play, the job is stopped and its Deferred fails with
        :class:`Cancelled` only once the device is quiet; when it waits, or
        shares its job with requests that still want it, it is detached at
        once (nothing of its own runs on the device).  Returns False when
        there is nothing to cancel: it is not here, already settled, or
        already being stopped (it will end as its superseder decided).
        """
        node = self._nodes.get(action.node)
        job = self._job_of(node, action)
        if job is None or action.deferred.called or job.stopping is not None:
            return False
        error = Cancelled(action.operation_id, reason, by)
        if job.execution is not None and job.members == [action]:
            self._stop(action.node, job, lambda a: Cancelled(a.operation_id, reason, by))
        else:
            self._withdraw(action, error)
        return True

    def idle(self, node_name):
        """A Deferred firing once nothing is in play or waiting for the node."""
        node = self._nodes.get(node_name)
        if node is None or node.idle():
            return defer.succeed(None)
        waiters = self._idle_waiters.setdefault(node_name, [])

        def give_up(d):
            if d in waiters:
                waiters.remove(d)

        d = defer.Deferred(give_up)
        waiters.append(d)
        return d

    # -- what runs now ------------------------------------------------------

    def activity(self, node_name=None):
        """Snapshots (:class:`NodeActivity`) of every busy node, or one node."""
        names = [node_name] if node_name is not None else sorted(self._nodes)
        result = []
        for name in names:
            node = self._nodes.get(name)
            # (A node in the table is never idle, _release removes those, and
            # a missing one comes alone: make mutate's break is equivalent.)
            if node is None or node.idle():
                continue
            result.append(NodeActivity(
                node=name,
                running=node.current.info() if node.current else None,
                waiting=node.waiting.info() if node.waiting else None,
                query=node.query.info() if node.query else None,
            ))
        return result

    def busy(self, node_name):
        """True when a change is in play or waiting (the poller skips it)."""
        node = self._nodes.get(node_name)
        return node is not None and (node.current is not None or node.waiting is not None)

    # -- jobs ---------------------------------------------------------------

    def _new_job(self, action):
        return _Job(leader=action, members=[action], queued_at=self._clock.seconds())

    @staticmethod
    def _join(job, action):
        action.coalesced_into = job.leader.operation_id
        job.members.append(action)

    def _start(self, node_name, job):
        job.started_at = self._clock.seconds()
        job.execution = defer.maybeDeferred(self._executor.execute, job.leader)
        job.execution.addBoth(self._finished, node_name, job)

    def _finished(self, result, node_name, job):
        """The executor is done with ``job`` (not called for stopped jobs)."""
        if job.stopping is not None:
            return None  # _stop settles the callers once the device is quiet
        node = self._nodes[node_name]
        if isinstance(result, Failure):
            self._settle_all(job.members, lambda a: result)
        else:
            observed = result if isinstance(result, Observed) else Observed(result)
            for member in list(job.members):
                self._settle(member, Outcome(
                    operation_id=member.operation_id,
                    action=member.action,
                    state=observed.state,
                    agent=observed.agent,
                    coalesced_into=member.coalesced_into,
                    detail=observed.detail(),
                ))
        self._release(node_name, node, job)
        return None

    def _stop(self, node_name, job, failure_for):
        """
        Cancel a running job; settle its callers with ``failure_for(action)``
        and release the node once the executor reports the device quiet, or
        after ``cancel_timeout`` at the latest.
        """
        job.stopping = failure_for
        job.execution.cancel()
        quiet = defer.maybeDeferred(self._executor.quiesced, job.leader)
        quiet.addTimeout(self._cancel_timeout, self._clock)

        def log_slow(failure):
            self.log.warn(
                "{node}: {op} did not stop within {timeout}s ({why}); going on",
                node=node_name, op=job.leader.operation_id,
                timeout=self._cancel_timeout, why=failure.getErrorMessage(),
            )

        quiet.addErrback(log_slow)
        quiet.addCallback(lambda _: self._stopped(node_name, job))

    def _stopped(self, node_name, job):
        self._settle_all(job.members, job.stopping)
        self._release(node_name, self._nodes[node_name], job)

    def _release(self, node_name, node, job):
        """``job`` is over: start whatever waited, forget idle nodes."""
        if node.query is job:
            node.query = None
        elif node.current is job:
            node.current = None
            if node.waiting is not None:
                node.current, node.waiting = node.waiting, None
                self._start(node_name, node.current)
        if node.idle() and self._nodes.get(node_name) is node:
            del self._nodes[node_name]
            for waiter in self._idle_waiters.pop(node_name, []):
                waiter.callback(None)

    def _supersede_waiting(self, job, by):
        self._settle_all(job.members, lambda a: Superseded(a.operation_id, by))

    # -- callers ------------------------------------------------------------

    @staticmethod
    def _job_of(node, action):
        """The job ``action`` belongs to on ``node``, or None."""
        if node is None:
            return None
        return next((j for j in (node.current, node.waiting, node.query)
                     if j is not None and action in j.members), None)

    def _withdraw(self, action, error=None):
        """A caller cancelled its request: detach it; stop work nobody wants."""
        node = self._nodes.get(action.node)
        job = self._job_of(node, action)
        if error is None:
            error = Cancelled(action.operation_id, "cancelled by its caller")
        self._settle(action, Failure(error))
        if job is None:
            return
        if job.members:
            if job.execution is None and job.leader is action:
                self._promote(job)
            return
        if job is node.waiting:
            node.waiting = None
        elif job.stopping is None:
            self._stop(action.node, job, lambda a: Cancelled(a.operation_id, error.reason,
                                                             error.by))

    @staticmethod
    def _promote(job):
        """
        The leader of a job that has not started left: the next member leads,
        so that no work ever runs under the id of a cancelled request.
        """
        job.leader = job.members[0]
        job.leader.coalesced_into = None
        for member in job.members[1:]:
            member.coalesced_into = job.leader.operation_id

    def _settle_all(self, members, result_for):
        for member in list(members):
            self._settle(member, result_for(member))

    def _settle(self, action, result):
        """Fire ``action``'s Deferred -- exactly once -- and detach it."""
        node = self._nodes.get(action.node)
        for job in (node.current, node.waiting, node.query) if node else ():
            if job is not None and action in job.members:
                job.members.remove(action)
        if action.deferred.called:
            return
        if isinstance(result, BaseException):
            result = Failure(result)
        if isinstance(result, Failure):
            action.deferred.errback(result)
        else:
            action.deferred.callback(result)
