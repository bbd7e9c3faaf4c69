"""
The region's coordination: dispatching journalled operations to a live
pserv of the node's cluster, recording outcomes, and re-dispatching when a
pserv goes away.

The database is the source of truth; this object only ever *re-sends*
what the journal says is unfinished, and pservs drop what they already
have (by operation id), so sending twice is harmless and losing a message
is repaired by the next (re)connection.
"""

import collections
import json

from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.protocols import amp
from twisted.logger import Logger
from twisted.python.failure import Failure

from powerctl.deferreds import when_fired
from powerctl.power import TARGET_STATES, TERMINAL_STATES, Action, OpState
from powerctl.powerdoc import agent_list
from powerctl.rpc import commands
from powerctl.rpc.failures import expected
from powerctl.region.errors import Conflict, InvalidInput, NotFound, Unavailable
from powerctl.region.peers import PendingPeers
from powerctl.region.rpc import PservDirectory, error_text

#: Seconds the region waits for pservs to make a node's device quiet
#: (delete, move, new configuration, operator cancel).  The pserv bounds its
#: own wait by its cancel timeout (5 s), so this is only a safety net.
QUIET_TIMEOUT = 10.0
#: Operations per ``PowerMany`` call at most (each page is also cut to fit
#: one AMP value, and its answer must fit one too).
BATCH = 100


def pages(items, limit=BATCH, size=commands.MAX_VALUE):
    """
    ``items`` (JSON-able) cut into pages of at most ``limit`` items whose
    JSON list fits ``size`` bytes; an item too large on its own goes alone
    (its call fails as its single command would).
    """
    # ``used`` is the page's JSON length exactly: "[" and, per item, its
    # text and the "," or "]" after it.  (It started at 2 once, one byte
    # short of a page that fits exactly: make mutate found it.)
    page, used = [], 1
    for item in items:
        length = len(json.dumps(item, separators=(",", ":"))) + 1
        if page and (len(page) >= limit or used + length > size):
            yield page
            page, used = [], 1
        page.append(item)
        used += length
    if page:
        yield page


class Region:
    log = Logger()

    #: Operations per ``PowerMany`` call at most (see :func:`pages`).
    batch = BATCH
    #: Dispatches (or pages of a batch) using the database at once.  The
    #: API hands them out without waiting, and they share the database
    #: pool with the pservs' heartbeats: 4,000 dispatches at once queued
    #: some 16,000 reads ahead of a heartbeat's lease renewal, the pserv's
    #: lease ran out, it went quiet and dropped everything it was running,
    #: again at every reconnection (issue 14: 5,000 IPMI power-ons never
    #: finished).  Bounded, a heartbeat waits behind a few reads at most.
    #: (The region setting ``dispatch_concurrency``; this is its default.)
    dispatch_concurrency = 4

    def __init__(self, name, store, secret, clock, heartbeat_timeout=30.0, leases=None,
                 dispatch_concurrency=None):
        if dispatch_concurrency is not None:
            self.dispatch_concurrency = dispatch_concurrency
        self.name = name
        self.store = store
        self.leases = leases
        self.secret = secret
        self.pserv_credentials = None  # issue 10: powerctl.region.pservcreds.PservCredentials
        self.clock = clock
        self.heartbeat_timeout = heartbeat_timeout
        self.directory = PservDirectory()
        #: AMP connections not yet authenticated, per address (bounded).
        self.pending_peers = PendingPeers()
        self._busy = set()  # Deferreds of work still using the database
        # Operations this region dispatched itself: the NOTIFY each request
        # sends comes back to us too and must not dispatch them again.
        self._dispatched = collections.OrderedDict()
        self._dispatching = defer.DeferredSemaphore(self.dispatch_concurrency)
        self._notified = {}  # operation ids NOTIFYed, waiting for the drain (in order)
        self._notify_drain = None  # the drain dispatching them, while one runs
        self.stopping = False
        #: Drops pservs gone silent, every third of the heartbeat timeout (at
        #: most once a second): a service for the region's MultiService.
        self.reaper = TimerService(max(1.0, heartbeat_timeout / 3), self.drop_silent_pservs)
        self.reaper.clock = clock

    def stop(self):
        """Close every pserv connection (the reaper stops with the region's services)."""
        self.stopping = True
        for protocol in self.directory.all():
            if protocol.transport is not None:
                protocol.transport.loseConnection()

    def track(self, d):
        """Remember ``d`` until it fires, so that :meth:`drain` can wait for it."""
        self._busy.add(d)

        def forget(result):
            self._busy.discard(d)
            return result

        return d.addBoth(forget)

    def drain(self, timeout=5.0):
        """
        Fires once no tracked work is running (or after ``timeout``): the
        database pool must outlive the work that uses it.
        """
        if not self._busy:
            return defer.succeed(None)
        waits = [when_fired(busy) for busy in list(self._busy)]
        # consumeErrors: when the timeout cancels the waits, their
        # CancelledErrors are ours, not unhandled errors left for the GC.
        d = defer.DeferredList(waits, consumeErrors=True)
        d.addTimeout(timeout, self.clock, onTimeoutCancel=lambda *a: None)
        return d.addBoth(lambda _: None)

    def activity(self):
        """Actions in flight per cluster, as the connected pservs last said."""
        result = {}
        for protocol in self.directory.all():
            result[protocol.cluster] = result.get(protocol.cluster, 0) + protocol.in_flight
        return result

    # -- dispatch -------------------------------------------------------------

    async def dispatch(self, op):
        """
        Send one journalled operation (a dict with ``id``, ``node``,
        ``action``) to its node's owner, under the owner's epoch, if that
        pserv is connected to this region.  Otherwise it stays as it is:
        the region the owner is connected to dispatches it on the NOTIFY
        every request sends, and an owner takes its open operations in every
        ``Recover``.  Answers the disposition (or ``pending``/``elsewhere``).
        """
        if not self.directory.all():
            # issue 14: no pserv at all is connected here, so nothing this
            # region could send it to (the owner's region dispatches it on
            # the request's NOTIFY): spare the request the owner's read.
            return "pending"
        owner = await self.leases.owner(op["node"])
        if owner is None:
            return "gone"
        if owner["owner_epoch"] is None and owner["handoff_epoch"] is None:
            if not self.directory.for_cluster(owner["cluster"]):
                # No pserv of the cluster is connected here, so this region
                # could not send it anyway: the region one is connected to
                # assigns and dispatches on the NOTIFY of the request (and
                # the leader's round assigns in any case).  Not assigning
                # here spares every request a locked round over the cluster
                # while its pservs are away (or all on other regions).
                return "pending"
            # A new node (or one whose owner died): assign its cluster now
            # rather than at the leader's next round.
            await self.assign(owner["cluster"])
            owner = await self.leases.owner(op["node"])
            if owner is None:
                return "gone"
        epoch = owner["owner_epoch"]
        if epoch is None or owner["handoff_epoch"] is not None:
            self.log.info("operation {op}: node {n} has no owner now (or is being handed "
                          "over); it waits", op=op["id"], n=op["node"])
            return "pending"
        protocol = self.directory.by_epoch(epoch)
        if protocol is None:
            return "elsewhere"
        try:
            power = await self.store.nodes.power_config(op["node"])
        except NotFound:
            return "gone"  # deleted since the owner was read
        lockouts = (await self.store.lockouts.of_nodes([op["node"]])).get(op["node"], [])
        circuit = await self.store.nodes.circuit_config(op["node"])
        command = commands.POWER_COMMANDS[op["action"]]
        extra = {"circuit": circuit} if circuit else {}
        try:
            answer = await protocol.callRemote(
                command, operation_id=op["id"], node=op["node"], power=power, epoch=epoch,
                lockouts=lockouts, **extra)
        except commands.UnusablePowerConfig as e:
            await self.store.ops.record_outcome(
                op["id"], OpState.FAILED.value, error=error_text("config", e),
                pserv=protocol.pserv)
            return "failed"
        except commands.StaleEpoch as e:
            self.log.info("operation {op}: {why}; the next owner takes it", op=op["id"], why=e)
            return "pending"
        except Exception as e:
            if not expected(Failure(), command):
                # A bug of this region: logged with its traceback, never
                # mistaken for a lost connection.
                self.log.failure("dispatch of {op} to {p} failed unexpectedly",
                                 op=op["id"], p=protocol.pserv)
                return "pending"
            # The connection went mid-call, or the pserv answered an error
            # (its own bugs are logged there): the operation stays pending
            # and the pserv's next Recover re-sends it.
            self.log.warn("dispatch of {op} to {p} failed: {why}",
                          op=op["id"], p=protocol.pserv, why=e)
            return "pending"
        try:
            await self.store.ops.mark_running(op["id"], protocol.pserv, epoch=epoch)
        except NotFound:
            # Deleted while the pserv took it (with its node, by another
            # region or an operator): nothing to record.  The pserv's
            # outcome for it is refused once and dropped (ReportOutcome).
            # Raised on, it was a logged failure of the NOTIFY drain.
            self.log.info("operation {op} was deleted while {p} took it",
                          op=op["id"], p=protocol.pserv)
            return "gone"
        return answer["disposition"]

    def dispatch_later(self, op):
        """Fire-and-forget dispatch for the API (which has answered 202)."""
        self._remember_dispatched([op["id"]])
        if not self.directory.all():
            # As in dispatch(): no pserv here to send it to.  Answered before
            # taking a dispatch turn, which cost the POST path a semaphore and
            # a tracked Deferred per request for nothing (about 4 % of its CPU).
            return defer.succeed("pending")
        d = self.track(self._dispatching.run(lambda: defer.ensureDeferred(self.dispatch(op))))
        d.addErrback(lambda f: self.log.failure("dispatch of {op}", f, op=op["id"]))
        return d

    def dispatch_many_later(self, ops):
        """Fire-and-forget :meth:`dispatch_many` for the API's bulk requests."""
        self._remember_dispatched([op["id"] for op in ops])
        d = self.track(defer.ensureDeferred(self.dispatch_many(ops)))
        d.addErrback(lambda f: self.log.failure("dispatch of {n} operation(s) from {first}",
                                                f, n=len(ops), first=ops[0]["id"] if ops else None))
        return d

    def _remember_dispatched(self, ids):
        for op_id in ids:
            self._dispatched[op_id] = None
        while len(self._dispatched) > 10_000:
            self._dispatched.popitem(last=False)

    async def dispatch_many(self, ops):
        """
        Send several journalled operations (a bulk request's) to their
        nodes' owners as :meth:`dispatch` sends one, but as one batch
        (issue 14): one read of every node's owner, configuration,
        lock-outs and circuit; per owner, one ``PowerMany`` call per page
        (:func:`pages`: at most :data:`BATCH` operations, within one AMP
        value); one ``mark_running_many`` per page.  Each operation ends
        as :meth:`dispatch` would leave it; a node whose configuration no
        longer resolves has its operation failed, as ``Recover`` does.
        Fences go one by one through :meth:`dispatch` (their checks are the
        node's own).  Answers ``{operation id: disposition}``.
        """
        results = {}
        for op in ops:
            if op["action"] == Action.FENCE.value:
                results[op["id"]] = await self._dispatching.run(
                    lambda op=op: defer.ensureDeferred(self.dispatch(op)))
        ops = sorted((op for op in ops if op["action"] != Action.FENCE.value),
                     key=lambda op: op["id"])
        if not ops:
            return results
        view = await self._dispatching.run(lambda: defer.ensureDeferred(
            self._dispatch_view(sorted({op["node"] for op in ops}))))
        per_owner = {}
        for op in ops:
            node = view.get(op["node"])
            if node is None:
                results[op["id"]] = "gone"
                continue
            epoch = node["owner_epoch"]
            if epoch is None or node["handoff_epoch"] is not None:
                results[op["id"]] = "pending"  # the next owner takes it at its Recover
                continue
            protocol = self.directory.by_epoch(epoch)
            if protocol is None:
                results[op["id"]] = "elsewhere"
                continue
            if node["power"] is None:
                self.log.warn("operation {op}: node {n}'s power configuration no longer "
                              "resolves: {why}", op=op["id"], n=op["node"],
                              why=node["power_error"])
                await self.store.ops.record_outcome(
                    op["id"], OpState.FAILED.value,
                    error=error_text("config", node["power_error"]), pserv=protocol.pserv)
                results[op["id"]] = "failed"
                continue
            item = {"id": op["id"], "node": op["node"], "action": op["action"],
                    "power": node["power"], "lockouts": node["lockouts"]}
            if node["circuit"]:
                item["circuit"] = node["circuit"]
            per_owner.setdefault(epoch, (protocol, []))[1].append(item)
        # The pages take their turns with every other dispatch (the first
        # start at once: the reads above held no turn), in order: AMP keeps
        # a connection's boxes in order, so a node's operations reach its
        # pserv oldest first.
        calls = [self._dispatching.run(
                     lambda protocol=protocol, epoch=epoch, page=page: defer.ensureDeferred(
                         self._dispatch_page(protocol, epoch, page)))
                 for epoch, (protocol, items) in sorted(per_owner.items())
                 for page in pages(items, self.batch)]
        for answered in await defer.gatherResults(calls, consumeErrors=True):
            results.update(answered)
        return results

    async def _dispatch_view(self, names):
        """The nodes' owners and configurations, their clusters assigned first where needed."""
        view = await self.store.ops.dispatch_view(names)
        unowned = sorted({v["cluster"] for v in view.values()
                          if v["owner_epoch"] is None and v["handoff_epoch"] is None
                          and self.directory.for_cluster(v["cluster"])})
        if unowned:
            # New nodes (or their owner died): assign their clusters now, as
            # dispatch does for one, then read again.
            for cluster in unowned:
                await self.assign(cluster)
            view = await self.store.ops.dispatch_view(names)
        return view

    async def _dispatch_one_by_one(self, protocol, epoch, page):
        """A page of :meth:`dispatch_many` as single power commands: ``{id: disposition}``."""
        results, started = {}, []
        for item in page:
            command = commands.POWER_COMMANDS[item["action"]]
            extra = {"circuit": item["circuit"]} if item.get("circuit") else {}
            try:
                answer = await protocol.callRemote(
                    command, operation_id=item["id"], node=item["node"], power=item["power"],
                    epoch=epoch, lockouts=item["lockouts"], **extra)
            except commands.UnusablePowerConfig as e:
                await self.store.ops.record_outcome(
                    item["id"], OpState.FAILED.value, error=error_text("config", e),
                    pserv=protocol.pserv)
                results[item["id"]] = "failed"
                continue
            except Exception as e:
                if not expected(Failure(), command):
                    self.log.failure("dispatch of {op} to {p} failed unexpectedly",
                                     op=item["id"], p=protocol.pserv)
                else:  # stale epoch, gone mid-call, refused: the next Recover takes it
                    self.log.warn("dispatch of {op} to {p} failed: {why}",
                                  op=item["id"], p=protocol.pserv, why=e)
                results[item["id"]] = "pending"
                continue
            started.append(item["id"])
            results[item["id"]] = answer["disposition"]
        if started:
            await self.store.ops.mark_running_many(started, protocol.pserv, epoch)
        return results

    async def _dispatch_page(self, protocol, epoch, page):
        """One ``PowerMany`` call and its ``mark_running_many``: ``{id: disposition}``."""
        pending = {item["id"]: "pending" for item in page}
        if getattr(protocol, "without_power_many", False):
            return await self._dispatch_one_by_one(protocol, epoch, page)
        try:
            answer = await protocol.callRemote(commands.PowerMany, operations=page,
                                               epoch=epoch)
        except amp.UnhandledCommand:
            # A pserv older than PowerMany (a rolling upgrade): one power
            # command per operation, as before it, on this connection from
            # now on -- not every operation left for its next Recover.
            self.log.info("pserv {p} does not know PowerMany: dispatching one by one",
                          p=protocol.pserv)
            protocol.without_power_many = True
            return await self._dispatch_one_by_one(protocol, epoch, page)
        except commands.StaleEpoch as e:
            self.log.info("{n} operation(s) from {op}: {why}; the next owner takes them",
                          n=len(page), op=page[0]["id"], why=e)
            return pending
        except Exception as e:
            if not expected(Failure(), commands.PowerMany):
                self.log.failure("dispatch of {n} operation(s) from {op} to {p} failed "
                                 "unexpectedly", n=len(page), op=page[0]["id"],
                                 p=protocol.pserv)
            else:  # gone mid-call, or refused: the pserv's next Recover takes them
                self.log.warn("dispatch of {n} operation(s) from {op} to {p} failed: {why}",
                              n=len(page), op=page[0]["id"], p=protocol.pserv, why=e)
            return pending
        results, started = dict(pending), []
        answers = answer["results"] if isinstance(answer["results"], list) else []
        for result in answers:
            if not isinstance(result, dict) or result.get("id") not in pending:
                continue
            refused = result.get("refused")
            if refused == "INVALID_POWER_CONFIG":
                await self.store.ops.record_outcome(
                    result["id"], OpState.FAILED.value,
                    error=error_text("config", str(result.get("error"))[:1000]),
                    pserv=protocol.pserv)
                results[result["id"]] = "failed"
            elif not refused and isinstance(result.get("disposition"), str):
                started.append(result["id"])
                results[result["id"]] = result["disposition"]
        if started:
            await self.store.ops.mark_running_many(started, protocol.pserv, epoch)
        return results

    # -- reports --------------------------------------------------------------

    async def outcome(self, op_id, outcome, observed_state, agent, error,
                      coalesced_into, superseded_by, pserv, epoch=None, detail=None):
        """
        Record a pserv's report of how an operation ended.  False when it
        changed nothing: already terminal, or the operation is unknown (a
        report from before a database restore) -- logged, never raised,
        so one stale report cannot cost a pserv its connection.
        """
        try:
            recorded = await self.store.nodes.record_outcome(
                op_id, outcome, observed_state=observed_state, agent=agent, error=error,
                coalesced_into=coalesced_into, superseded_by=superseded_by, pserv=pserv,
                epoch=epoch, detail=detail)
        except NotFound:
            self.log.warn("pserv {p} reported on operation {op}, which does not exist; dropped",
                          p=pserv, op=op_id)
            return False
        return recorded.changed

    async def outcomes(self, reports, pserv, epoch):
        """
        Record a batch of a pserv's reports in one transaction (issue 14):
        ``reports`` are dicts of :meth:`outcome`'s arguments (``op_id``,
        ``state``, ...), all run under ``epoch``.  Answers one result per
        report, in order: whether it changed the journal, or the refusal
        (:class:`StaleEpoch`, :class:`InvalidInput`) :meth:`outcome` would
        have raised.  A report on an unknown operation is logged and
        answered False, as :meth:`outcome` does.
        """
        batch = [dict(r, pserv=pserv, epoch=epoch) for r in reports]
        answers = []
        for report, result in zip(batch, await self.store.nodes.record_outcomes(batch)):
            if isinstance(result, NotFound):
                self.log.warn("pserv {p} reported on operation {op}, which does not exist; "
                              "dropped", p=pserv, op=report["op_id"])
                answers.append(False)
            elif isinstance(result, Exception):
                answers.append(result)
            else:
                answers.append(result.changed)
        return answers

    async def polled(self, reports):
        """
        Record one batch of a pserv's polls, ``[(node, state, error)]``, in
        one transaction.  When a node drifted and its cluster enforces
        (:mod:`powerctl.region.drift`), the store has journalled a
        ``reconcile`` operation: it is dispatched like any API request.
        Answers the store's ``(recorded, missing, refused)``.
        """
        recorded, missing, refused = await self.store.nodes.record_polls(reports)
        for name, row in recorded.items():
            op = row.pop("reconcile", None)
            if op is not None:
                self.log.info("node {n} drifted from {desired} (observed {observed}):"
                              " reconcile operation {op}", n=name, desired=row["desired_state"],
                              observed=row["power_state"], op=op["id"])
                self.dispatch_later(op)
        return recorded, missing, refused

    # -- an operator's hand on one node or operation -------------------------

    async def _each_pserv(self, cluster, command, timeout=QUIET_TIMEOUT, **kwargs):
        """
        ``command`` to every pserv of ``cluster`` connected here, at once:
        ``[(pserv name, answer or Failure)]``.  Bounded by ``timeout``.
        """
        protocols = self.directory.for_cluster(cluster)
        calls = []
        for protocol in protocols:
            d = protocol.callRemote(command, **kwargs)
            d.addTimeout(timeout, self.clock)
            calls.append(d)
        results = await defer.DeferredList(calls, consumeErrors=True)
        for protocol, (ok, value) in zip(protocols, results):
            if not ok and not expected(value, command):
                # The callers read the Failure as "this pserv did not do
                # it"; a bug behind it is logged here, once, with its cause.
                self.log.failure("{command} to pserv {p} failed unexpectedly", value,
                                 command=command.__name__, p=protocol.pserv)
        return [(p.pserv, value) for p, (_, value) in zip(protocols, results)]

    async def quiesce_node(self, node, reason):
        """
        Make every pserv of ``node``'s cluster connected here stop driving
        it and forget it (``ForgetNode``), waiting until its device is
        quiet.  Answers the ids of the operations they cancelled.  A pserv
        that cannot answer is logged; it forgets the node at its next
        recovery round, which no longer lists it.
        """
        cancelled = set()
        for pserv, answer in await self._each_pserv(
                node["cluster"], commands.ForgetNode, node=node["name"], reason=reason):
            if isinstance(answer, dict):
                cancelled.update(int(i) for i in answer["cancelled"])
            else:
                self.log.warn("pserv {p} did not confirm that node {n} is quiet: {why}",
                              p=pserv, n=node["name"], why=answer.getErrorMessage())
        return cancelled

    async def delete_node(self, name, by):
        """Delete a node: its pservs stop driving it first; its open operations end cancelled."""

        seen = {}

        async def quiesce(node):
            seen["cluster"] = node["cluster"]
            return await self.quiesce_node(node, f"node {name} deleted by {by}")

        result = await self.store.nodes.delete(name, by=by, quiesce=quiesce)
        if "cluster" in seen and self.leases is not None:
            # An owner connected only to another region forgets it at the
            # Recover this makes every region ask for.
            await self.leases.notify(seen["cluster"])
        return result

    async def update_node(self, name, by, **fields):
        """
        Change a node's cluster or power configuration: the pservs of its
        (old) cluster stop and forget it before the change is committed;
        its open operations then go to the cluster it is in now.
        """

        seen = {}

        async def quiesce(node):
            seen["cluster"] = node["cluster"]
            return await self.quiesce_node(node, f"node {name} reconfigured by {by}")

        row = await self.store.nodes.update(name, quiesce=quiesce, by=by, **fields)
        if row.pop("changed_for_pserv"):
            # Every region's pservs of the old cluster refresh: the owner
            # learns the new configuration, or forgets a node moved away.
            await self.leases.notify(seen.get("cluster", row["cluster"]))
            await self.assign(row["cluster"])
            for op in await self.store.ops.open_of_node(name):
                self.dispatch_later(op)
        return row

    async def clear_lockout(self, node):
        """
        An operator clears ``node``'s BMC lock-out (issue 10): the rows go
        (with a ``NOTIFY assignments``, so an owner connected only to
        another region learns it at the Recover that makes it ask for), and
        the pservs of its cluster connected here are told at once
        (``ClearLockout``).  Answers the lock-outs cleared.
        """
        result = await self.store.lockouts.clear(node)
        # Sent even when no row was cleared: a lock-out the owner has not
        # reported yet is cleared too (the operator means it).
        for pserv, answer in await self._each_pserv(
                result["cluster"], commands.ClearLockout, node=node):
            if not isinstance(answer, dict):
                self.log.warn("pserv {p} did not confirm the clearing of node {n}'s "
                              "lock-out ({why}); it learns it at its next recovery",
                              p=pserv, n=node, why=answer.getErrorMessage())
        return result["cleared"]

    async def cancel_op(self, op_id, by, force=False):
        """
        An operator cancels an open operation.  Every pserv of its node's
        cluster connected here is asked (``CancelOperation``); the journal
        says ``cancelled`` only once the one that had it reports the device
        quiet, or when no pserv has it in play.  Conflict when it already
        ended; Unavailable when the pserv that runs it is not connected here
        (unless ``force``: then the journal says so and the device's state
        is unknown until the next poll).
        """
        op = await self.store.ops.mark_operator(op_id, "cancelled_by", by)
        reason = f"cancelled by {by}"
        node = await self._node_or_none(op["node"])
        answers = []
        if node is not None:
            answers = await self._each_pserv(
                node["cluster"], commands.CancelOperation,
                operation_id=op["id"], reason=reason)
        known = {p: a for p, a in answers if isinstance(a, dict) and a["known"]}
        ended = {a["outcome"] for a in known.values()} - {OpState.CANCELLED.value}
        if ended and not any(a["outcome"] == OpState.CANCELLED for a in known.values()):
            raise Conflict(f"power operation {op['id']} ended {ended.pop()} "
                           "before it could be cancelled")
        owner = await self.leases.owner(op["node"]) if self.leases is not None else None
        live_owner_elsewhere = (
            owner is not None and owner["owner_epoch"] is not None
            and self.directory.by_epoch(owner["owner_epoch"]) is None)
        ran_elsewhere = op["state"] == OpState.RUNNING and op["pserv"] not in [p for p, _ in answers]
        if not known and (live_owner_elsewhere or ran_elsewhere):
            if not force:
                await self.store.ops.mark_operator(op["id"], "cancelled_by", None, ended_ok=True)
                raise Unavailable(
                    f"power operation {op['id']} runs on pserv {op['pserv']}, which is not "
                    "connected to this region: cannot make sure its device is quiet. "
                    "Retry, or cancel with force")
            reason += " (forced: the device was not reached; its state is unknown)"
        recorded = await self.store.ops.record_outcome(
            op["id"], OpState.CANCELLED.value, error=reason, cancelled_by=by)
        return recorded.op

    async def confirm_op(self, op_id, state, by):
        """
        An operator confirms a manual operation: the node is now ``state``.
        The pserv running it completes it; its outcome is journalled as
        usual.  Conflict when it cannot apply (the reason says why).
        """
        if state not in TARGET_STATES:
            raise InvalidInput(f"state: must be on or off, not {state!r}")
        op = await self.store.ops.get(op_id)
        if op["state"] in TERMINAL_STATES:
            raise Conflict(f"power operation {op['id']} already ended {op['state']}")
        node = await self.store.nodes.get(op["node"])
        drivers = {a.get("driver") for a in agent_list(node["power"]) if isinstance(a, dict)}
        if "manual" not in drivers:
            raise InvalidInput(f"node {node['name']} has no manual agent: nothing to confirm")
        answers = await self._each_pserv(node["cluster"], commands.ConfirmOperation,
                                         operation_id=op["id"], state=state)
        if any(isinstance(a, dict) for _, a in answers):
            return await self.store.ops.mark_operator(op["id"], "confirmed_by", by, ended_ok=True)
        reasons = [a.value for _, a in answers if not isinstance(a, dict)]
        refusals = [str(e) for e in reasons if isinstance(e, commands.NotConfirmable)]
        if refusals:
            raise Conflict(f"cannot confirm power operation {op['id']}: {refusals[0]}")
        raise Unavailable(f"no pserv of cluster {node['cluster']} that could confirm "
                          f"power operation {op['id']} is connected to this region")

    async def _node_or_none(self, name):
        try:
            return await self.store.nodes.get(name)
        except NotFound:
            return None

    # -- pservs coming and going -----------------------------------------------

    async def pserv_lost(self, protocol):
        """
        A pserv's connection to this region closed.  Its work is not moved
        from here: it may be alive through another region, and its lease
        says whether it is -- its nodes move once the lease is over (or at
        once if it released it).
        """
        if self.stopping:
            return  # we dropped it ourselves; it will register with our successor
        await self.store.clusters.pserv_disconnected(protocol.pserv, region=self.name)

    # -- ownership ------------------------------------------------------------

    async def assign(self, cluster):
        """
        One assignment round for ``cluster`` (see :mod:`powerctl.ownership`);
        the pservs it concerns that are connected here refresh at once.
        Other regions hear of it through ``NOTIFY assignments``.
        """
        changes = await self.leases.assign(cluster)
        if changes and (changes["assigned"] or changes["handoffs"]):
            self.log.info("cluster {c}: assigned {a}, handing over {h}", c=cluster,
                          a={e: len(n) for e, n in changes["assigned"].items()},
                          h={e: len(n) for e, n in changes["handoffs"].items()})
            self.refresh_cluster(cluster)
        elif changes and changes.get("waiting"):
            # A hand-over marked earlier and still not released: the owner
            # missed (or lost) its refresh.  Ask again at every round, so a
            # lost message delays a hand-over by one round, never for good.
            self.refresh_cluster(cluster)
        return changes

    def refresh_cluster(self, cluster):
        """Ask the cluster's pservs connected here to ``Recover`` now."""
        for protocol in self.directory.for_cluster(cluster):
            d = protocol.callRemote(commands.Refresh)
            d.addErrback(self._refresh_failed, protocol)

    def _refresh_failed(self, failure, protocol):
        if expected(failure, commands.Refresh):
            # Gone or refused: it refreshes anyway at its next poll round.
            self.log.warn("pserv {p} did not take a refresh: {why}", p=protocol.pserv,
                          why=failure.getErrorMessage())
        else:
            self.log.failure("refresh of pserv {p} failed unexpectedly", failure,
                             p=protocol.pserv)

    async def assignment_round(self):
        """The leader's periodic job: every cluster's assignment (dead leases' nodes move)."""
        for cluster in await self.leases.clusters():
            await self.assign(cluster)

    async def notified(self, channel, payload):
        """A NOTIFY from any region (see :mod:`powerctl.region.coordination`)."""
        if channel == "assignments":
            self.refresh_cluster(payload)
        elif channel == "power_ops":
            if not self.directory.all():
                return  # no pserv here to send it to: another region's
            try:
                if int(payload) in self._dispatched:
                    return  # ours: already on its way
            except ValueError:
                return
            # Another region's bulk request is a NOTIFY per operation: one
            # drain at a time takes every one waiting -- one read and one
            # batch for what piled up meanwhile.  (Not a turn per NOTIFY:
            # thousands of waiters finishing at once, with nothing left to
            # read, would recurse through the semaphore.)
            self._notified[int(payload)] = None
            drain = self._notify_drain
            if drain is None:
                drain = self._notify_drain = defer.Deferred()
                d = self.track(defer.ensureDeferred(self._drain_notified(drain)))
                d.addErrback(lambda f: self.log.failure("dispatch of NOTIFYed operations", f))
            await when_fired(drain)

    async def _drain_notified(self, done):
        """Dispatch what was NOTIFYed until nothing waits; fires ``done`` then."""
        try:
            while self._notified:
                ops = await self._dispatching.run(lambda: defer.ensureDeferred(
                    self._read_notified()))
                if len(ops) == 1:  # (so ops[0] is ops[-1]: an equivalent mutant)
                    await self._dispatching.run(lambda: defer.ensureDeferred(
                        self.dispatch(ops[0])))
                elif ops:
                    await self.dispatch_many(ops)
        finally:
            self._notify_drain = None
            done.callback(None)

    async def _read_notified(self):
        """The pending operations among those NOTIFYed and not taken yet (oldest first)."""
        # Ours after all, some of them: the NOTIFY of a request can be read
        # before the API, resuming after the commit, hands its operations out.
        ids = [i for i in self._notified if i not in self._dispatched]
        self._notified.clear()
        if len(ids) > 1:
            ops = await self.store.ops.pending(ids)
            self._remember_dispatched([op["id"] for op in ops])
            return ops
        try:
            op = await self.store.ops.get(ids[0]) if ids else None
        except NotFound:
            return []
        return [op] if op is not None and op["state"] == OpState.PENDING else []

    def drop_silent_pservs(self):
        """Drop connections whose pserv stopped heart-beating (half-open TCP)."""
        now = self.clock.seconds()
        for protocol in self.directory.all():
            if now - protocol.last_heard > self.heartbeat_timeout:
                self.log.warn("pserv {p} silent for {s:.0f}s: dropping it",
                              p=protocol.pserv, s=now - protocol.last_heard)
                protocol.transport.abortConnection()
