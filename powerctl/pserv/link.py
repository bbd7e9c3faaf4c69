"""
The pserv's side of AMP: the protocol a region talks to, the hand-shake
(authenticate, register, recover) and the link that carries reports to
whichever region is connected.
"""

import bisect
import collections
import gc
import itertools
import json
import uuid
import weakref

from twisted.internet import defer, error, task
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from powerctl import __version__
from powerctl.power import TARGET_STATES, Action
from powerctl.pserv.core import NotConfirmable, NotOurs
from powerctl.powerdoc import InvalidPowerDocument
from powerctl.rpc import auth, commands, credentials, responders
from powerctl.rpc.failures import NO_ANSWER, UNDECLARED_ANSWER, expected


#: The commands of the hand-shake, whose declared errors it may fail with.
_HELLO = (commands.Challenge, commands.Authenticate, commands.Register, commands.Recover,
          commands.ReleaseNodes)


class RegionLink:
    """
    Reports go to one connected, authenticated region (they share one
    database, so any will do).  With none connected they wait in a bounded
    outbox; what overflows is not lost for good, because the region re-sends
    unfinished operations on reconnect and the pserv re-reports them.
    """

    log = Logger()

    #: ``ReportOutcomes`` calls in flight at once, and reports per call at most.
    max_in_flight = 2
    batch_size = 500
    #: Seconds between the starts of two ``ReportOutcomes`` calls while
    #: reports keep coming (with a clock; a full batch goes at once).
    #: Sent as they came, a busy pserv's outcomes went one or two a call
    #: (the region answered before the next one ended): 5,000 IPMI
    #: power-ons were 3,300 transactions, half the region's and
    #: PostgreSQL's work (issue 14).  Paced, they go about six a call at
    #: 125 a second and fifty at 1,000; a lone report still goes at once,
    #: and none waits longer than this.
    pace = 0.05

    def __init__(self, outbox_size=10_000, clock=None):
        #: The clock that paces calls (None: no pacing, every flush sends).
        self.clock = clock
        self._last_call = None  # clock seconds when the last ReportOutcomes started
        self._paced = None  # the clock's call that flushes once the pace allows
        self._connected = []
        #: ``(sequence, report)``, oldest first.  The sequence puts a report
        #: lost in flight back where it was: several lost together (their
        #: failures arrive one by one) keep their order.
        self._outbox = collections.deque(maxlen=outbox_size)
        self._sequence = itertools.count()
        self._in_flight = 0  # ReportOutcomes calls not answered yet
        #: Connections to regions that do not know ReportOutcomes (older).
        self._unbatched = weakref.WeakSet()
        #: Our lease's epoch as the protocols last learnt it (None: no lease).
        self.epoch = None
        #: Lock-outs not yet recorded by a region: (node, agent) -> (failures, reason).
        self._lockouts = {}
        #: Nodes handed over (no longer driven here) whose ``ReleaseNodes``
        #: no region has answered yet.  Once forgotten, a node is in no
        #: later recovery's "known before" set, so without this a release
        #: lost with its connection (or refused) left the next owner
        #: waiting for it for good; every recovery sends these again.
        self.unreleased = set()
        #: ``digest(node)`` and ``acknowledged(node, agent, id)``: set by the service.
        self.digest = lambda node: ""
        self.acknowledged = lambda node, agent, lockout_id: None

    def ready(self, protocol):
        self._connected.append(protocol)
        self.flush()

    def lost(self, protocol):
        if protocol in self._connected:
            self._connected.remove(protocol)
        self._unbatched.discard(protocol)

    @property
    def connected(self):
        return bool(self._connected)

    def report(self, report):
        self._outbox.append((next(self._sequence), report))
        self.flush()

    def report_lockout(self, node, agent, failures, reason):
        """
        Tell a region that ``node``'s agent ``agent`` is locked out (issue 10);
        kept until a region answers, so a lock-out found while no region is
        connected still reaches one.
        """
        self._lockouts[(node, agent)] = (failures, reason)
        self.flush()

    def _send_lockouts(self):
        if not self._lockouts or not self._connected or self.epoch is None:
            return
        protocol = self._connected[0]
        for (node, agent), (failures, reason) in sorted(self._lockouts.items()):
            d = protocol.callRemote(commands.ReportLockout, node=node, agent=agent,
                                    failures=failures, reason=reason[:1000],
                                    digest=self.digest(node), epoch=self.epoch)
            d.addCallbacks(self._lockout_recorded, self._lockout_undelivered,
                           callbackArgs=(node, agent), errbackArgs=(node, agent))
        self._lockouts.clear()

    def _lockout_recorded(self, answer, node, agent):
        if answer["recorded"]:
            self.acknowledged(node, agent, answer["id"])
        else:
            self.log.warn("the region did not record the lock-out of node {node} (its "
                          "configuration changed meanwhile)", node=node)

    def _lockout_undelivered(self, failure, node, agent):
        if failure.check(*NO_ANSWER):
            self._lockouts.setdefault((node, agent), (0, "authentication failures"))
            self.log.warn("lock-out of node {node} not delivered ({why}); keeping it",
                          node=node, why=failure.getErrorMessage())
            return
        self._failed(failure, f"reporting the lock-out of node {node}",
                     commands.ReportLockout)

    def flush(self):
        """
        Send what waits, a batch per ``ReportOutcomes`` call (issue 14: one
        call and one transaction for many outcomes rather than one each),
        at most :attr:`max_in_flight` calls at once: what comes in while
        they are in flight waits and goes in the next batch, so batches
        grow with the load and a lone report still goes at once.  With a
        clock, calls also start at most one per :attr:`pace` unless a
        full batch waits.
        """
        self._send_lockouts()
        while self._outbox and self._connected and self._in_flight < self.max_in_flight:
            protocol = self._connected[0]
            if protocol in self._unbatched:  # a region from before ReportOutcomes: unpaced
                batch = [self._outbox.popleft()]
                report = batch[0][1]
                call = (commands.ReportOutcome, dict(
                    _report_json(report), epoch=report.epoch, detail=report.detail,
                    error_kind=report.error_kind or None))
            else:
                if self._held_back():
                    return
                batch = self._take_batch()
                call = (commands.ReportOutcomes, dict(
                    reports=[_report_json(r) for _, r in batch], epoch=batch[0][1].epoch))
            self._in_flight += 1
            if self.clock is not None:
                self._last_call = self.clock.seconds()
            # maybeDeferred: a box that cannot be encoded fails here, at once
            d = defer.maybeDeferred(protocol.callRemote, call[0], **call[1])
            d.addCallbacks(self._delivered, self._undelivered,
                           callbackArgs=(batch,), errbackArgs=(batch, protocol))
            d.addBoth(self._settled)

    def _held_back(self):
        """
        Whether the next call waits for :attr:`pace` (a flush is then
        scheduled for when it may go): only while the last call started
        less than ``pace`` ago and no full batch waits.
        """
        if self.clock is None or self._last_call is None or \
                len(self._outbox) >= self.batch_size:
            return False
        wait = self._last_call + self.pace - self.clock.seconds()
        if wait <= 0:
            return False
        if self._paced is None or not self._paced.active():
            self._paced = self.clock.callLater(wait, self.flush)
        return True

    def send_now(self):
        """
        Send what waits without waiting for the pace (a pserv stopping
        hands over its last outcomes before it gives its lease back).
        """
        self.close()
        self._last_call = None
        self.flush()

    def close(self):
        """No more paced flushes (the service stops): the scheduled one is cancelled."""
        if self._paced is not None and self._paced.active():
            self._paced.cancel()
        self._paced = None

    def _take_batch(self):
        """
        The oldest reports that share the first one's epoch (one call
        speaks for one lease), as many as fit one AMP value and
        :attr:`batch_size`.
        """
        batch, size = [], 2
        while self._outbox and len(batch) < self.batch_size:
            sequence, report = self._outbox[0]
            if batch and report.epoch != batch[0][1].epoch:
                break
            length = len(json.dumps(_report_json(report), separators=(",", ":"))) + 1
            if batch and size + length > commands.MAX_VALUE:
                break
            size += length
            batch.append(self._outbox.popleft())
        return batch

    def _settled(self, result):
        self._in_flight -= 1
        self.flush()
        return result

    def _delivered(self, answer, batch):
        refused = answer.get("refused")
        for refusal in refused if isinstance(refused, list) else ():
            # The region refused that one (a stale epoch, bad arguments):
            # sending it again would be refused again.  Logged once,
            # dropped; the journal keeps the operation open for its owner.
            refusal = refusal if isinstance(refusal, dict) else {}
            self.log.error("the region refused the outcome of operation {op}: {why}",
                           op=refusal.get("operation_id"), why=refusal.get("why"))

    def _undelivered(self, failure, batch, protocol):
        ops = [r.operation_id for _, r in batch]
        if failure.check(amp.UnhandledCommand) and protocol not in self._unbatched:
            # A region from before ReportOutcomes: this connection gets one
            # ReportOutcome per report from now on; nothing is lost.
            self.log.info("the region does not take outcomes in batches: sending them "
                          "one by one")
            self._unbatched.add(protocol)
            for sequence, report in reversed(batch):
                self._put_back(sequence, report)
            return
        if failure.check(*commands.ReportOutcomes.errors, *UNDECLARED_ANSWER):
            # The region answered, and refused the whole call (a stale
            # epoch, bad arguments): sending it again would be refused
            # again.  Logged once, dropped; the journal keeps the
            # operations open for their current owner.
            self.log.error("the region refused the outcomes of operations {ops}: {why}",
                           ops=ops, why=failure.getErrorMessage())
            return
        if not failure.check(*NO_ANSWER):
            # A bug: logged with its cause, dropped like a refusal (sending
            # it again would most likely fail again).
            self.log.failure("the outcomes of operations {ops} could not be sent", failure,
                             ops=ops)
            return
        self.log.warn("outcomes of {ops} not delivered ({why}); keeping them",
                      ops=ops, why=failure.getErrorMessage())
        if failure.check(error.ConnectionClosed, amp.ProtocolSwitched):
            # That connection will not answer again: nothing more goes to
            # it (its protocol says so too once it notices, see lost()).
            self.lost(protocol)
        for sequence, report in reversed(batch):
            self._put_back(sequence, report)

    def _put_back(self, sequence, report):
        """Return a report to the outbox in its place; a full outbox drops its oldest."""
        place = next((i for i, (s, _) in enumerate(self._outbox) if s > sequence),
                     len(self._outbox))
        if len(self._outbox) == self._outbox.maxlen:
            if place == 0:  # older than everything waiting: it is the one to drop
                return
            self._outbox.popleft()
            place -= 1
        self._outbox.insert(place, (sequence, report))

    def refresh(self, incremental=False):
        """
        Page through recovery again on one connection: learns nodes added or
        changed since, and re-dispatches any operation whose dispatch was
        lost (operations already here are recognised by id and skipped).
        ``incremental``: only the nodes changed since the connection's last
        recovery, when the region gave a cursor (:attr:`incremental`);
        a full one otherwise.
        """
        if not self._connected:
            return defer.succeed(None)
        connection = self._connected[0]
        d = defer.ensureDeferred(
            connection.recover(incremental=True) if incremental else connection.recover())
        d.addErrback(self._failed, "refresh from the region", commands.Recover,
                     commands.ReleaseNodes)
        return d

    @property
    def incremental(self):
        """Whether :meth:`refresh` can be incremental now (the region gave a cursor)."""
        return bool(self._connected) and self._connected[0].cursor is not None

    def _failed(self, failure, what, *called):
        """
        A call to the region that failed: a connection gone or an error the
        ``called`` commands declare is a warning (the next round tries
        again); anything else is a bug, logged once with its traceback.
        """
        if expected(failure, *called):
            self.log.warn("{what} failed: {why}", what=what, why=failure.getErrorMessage())
        else:
            self.log.failure("{what} failed unexpectedly", failure, what=what)

    def send_states(self, states, epoch):
        if not self._connected or epoch is None:
            return defer.succeed(None)
        d = self._connected[0].callRemote(commands.ReportPowerState, states=states,
                                          epoch=epoch)
        d.addErrback(self._failed, "delivering power states", commands.ReportPowerState)
        return d


class PservProtocol(amp.AMP):
    """One connection to one region."""

    log = Logger()

    def __init__(self, pserv, link, settings, secret, clock, keeper=None, instance=None,
                 lease_lost=None):
        super().__init__()
        self.pserv = pserv
        self.link = link
        self.settings = settings
        self.secret = secret
        self.clock = clock
        self.keeper = keeper  # the process's LeaseKeeper, shared by its connections
        self.instance = instance or uuid.uuid4().hex
        self._lease_lost = lease_lost  # called when a region says our lease is over
        self.gate = auth.Gate()
        self._heartbeat = None
        self.handshake = None
        self.epoch = None
        self.alive = False  # AMP does not keep BaseProtocol.connected
        #: One recovery at a time: each compares what it knew before with
        #: what the region lists, which only holds if no other recovery is
        #: changing what we know meanwhile.
        self._recovering = defer.DeferredLock()
        self._next_recovery = None  # the waiters of the queued recovery, if one is

    def locateResponder(self, name):
        """
        Responders answer only declared errors
        (:func:`powerctl.rpc.responders.guard`): a bug is ``INTERNAL_ERROR``
        logged with its traceback, a box missing an argument
        ``BAD_ARGUMENTS``; the connection stays up.
        """
        responder = super().locateResponder(name)
        if responder is None:
            return None
        return responders.guard(self, name, responder, self.log)

    def connectionMade(self):
        super().connectionMade()
        self.alive = True
        self.handshake = defer.ensureDeferred(self._hello())
        self.handshake.addErrback(self._hello_failed)

    async def _hello(self):
        challenge = await self.callRemote(commands.Challenge)
        my_nonce = auth.new_nonce()
        key = credentials.key_of(self.secret)  # issue 10: shared secret or credential
        answer = await self.callRemote(
            commands.Authenticate, proof=auth.proof(key, challenge["nonce"]), nonce=my_nonce,
            **credentials.authenticate_arguments(self.secret))
        if not auth.valid(key, my_nonce, answer["proof"]):
            raise commands.AuthenticationFailed("the region does not hold our secret")
        self.gate.open = True
        sent = self.clock.seconds()
        answer = await self.callRemote(
            commands.Register, cluster=self.settings.cluster,
            name=self.settings.name, version=__version__, instance=self.instance)
        await self._granted(answer["epoch"], sent, answer["lease"])
        await self.recover()
        self.link.ready(self)
        self._start_heartbeat()

    def _start_heartbeat(self):
        """
        Beat every ``heartbeat_interval`` for as long as the connection
        lasts.  :meth:`_beat` handles its calls' failures itself, so the
        loop fails only if :meth:`_beat` raises -- a bug, which stops the
        heartbeat (our lease then ends and we go quiet): logged with its
        traceback, so that the reason is never a mystery.
        """
        self._heartbeat = task.LoopingCall(self._beat)
        self._heartbeat.clock = self.clock
        self._heartbeat.start(self.settings.heartbeat_interval, now=True).addErrback(
            lambda f: self.log.failure("the heartbeat stopped", f))

    async def _granted(self, epoch, sent_at, remaining):
        """A lease answer: adopt ``epoch`` (going quiet first if it replaces another)."""
        if self.pserv.epoch is not None and self.pserv.epoch != epoch:
            self.log.warn("our lease changed from epoch {old} to {new}: going quiet first",
                          old=self.pserv.epoch, new=epoch)
            await self.pserv.go_quiet("the pserv's lease was replaced")
        self.epoch = epoch
        if self.keeper is not None:
            self.keeper.granted(epoch, sent_at, remaining)
        self.pserv.epoch = self.link.epoch = epoch

    #: Where an incremental recovery resumes: the region's cursor from the
    #: first page of the last recovery that completed (None: the region
    #: gave none, or none completed on this connection yet).
    cursor = None
    _next_full = True  # whether the queued recovery must be a full one

    def recover(self, incremental=False):
        """
        Page through the region's ``Recover`` (the nodes and operations our
        lease owns) and converge on it; hand over the nodes it no longer
        lists.  Recoveries asked for while one runs (a refresh from each
        region, a hand-shake) run after it, one at a time: two at once could
        each miss a node the other was just learning, and a node marked for
        hand-over would never be released.  All the requests made while one
        runs share the next run, which reads everything afresh anyway (and
        is a full one if any of them asked for a full one).

        ``incremental`` (issue 14): only the nodes changed since
        :attr:`cursor` and every open operation -- one or two pages instead
        of one per hundred nodes.  It cannot tell a deleted node or one
        moved to another cluster, so full recoveries remain: at every
        hand-shake, every push from the region, and now and then from the
        poller.
        """
        if self._next_recovery is not None:  # one is queued already: it will do
            self._next_full = self._next_full or not incremental
            waiter = defer.Deferred()
            self._next_recovery.append(waiter)
            return waiter
        waiter = defer.Deferred()
        waiters = self._next_recovery = [waiter]
        self._next_full = not incremental

        def start():
            self._next_recovery = None  # asked for from now on: the next run
            since = None if self._next_full else self.cursor
            return defer.ensureDeferred(self._recover(since))

        def settle(result):
            for each in waiters:
                if isinstance(result, Failure):
                    each.errback(result)
                else:
                    each.callback(result)

        self._recovering.run(start).addBoth(settle)
        return waiter

    async def _recover(self, changed_since=None):
        forgotten = self.pserv.watch_forgets()
        try:
            cursor = await self._recover_watching(forgotten, changed_since)
        finally:
            self.pserv.unwatch_forgets(forgotten)
        # Only a recovery that completed moves the cursor: one that failed
        # half-way is read again from the old cursor.
        self.cursor = cursor
        return "full" if changed_since is None else "incremental"

    async def _recover_watching(self, forgotten, changed_since=None):
        """Converge on one recovery; the cursor its first page gave (None if none)."""
        after_op, after_node, started = 0, "", 0
        known_before, listed, not_ours = set(self.pserv.executor.known_nodes()), set(), set()
        releasing = set()
        guard = getattr(self.pserv.executor, "lockout", None)
        since = guard.generation() if guard is not None else None  # issue 10
        asked = {} if changed_since is None else {"changed_since": changed_since}
        cursor = False  # not read yet
        while True:
            page = await self.callRemote(
                commands.Recover, after_op=after_op, after_node=after_node, **asked)
            if cursor is False:
                cursor = page.get("cursor")
            not_ours.update(page.get("not_ours") or ())
            for node in page["nodes"]:
                listed.add(node["name"])
                if node["name"] not in forgotten:  # deleted since this page was read
                    extra = _circuit_kw(node.get("circuit"))
                    if guard is not None:
                        extra.update(lockouts=node.get("lockouts") or [], since=since)
                    self.pserv.configure(node["name"], node["power"], **extra)
            for op in page["operations"]:
                if op["node"] in forgotten:
                    continue
                try:
                    if self.pserv.dispatch(op["id"], op["node"], op["action"], op["power"],
                                           **_circuit_kw(op.get("circuit")))[0] != "known":
                        started += 1
                except (InvalidPowerDocument, NotOurs) as e:
                    self.log.warn("recovered operation {op} unusable: {why}", op=op["id"], why=e)
            after_op, after_node = page["after_op"], page["after_node"]
            if page["done"]:
                releasing.update(page.get("releasing") or ())
                break
        if started:
            self.log.info("took {n} operation(s) from the region's journal", n=started)
        # Nodes the region no longer lists are not ours any more: handed to
        # another pserv, deleted or moved while no ForgetNode reached us.
        # (An incremental recovery lists only changed nodes: those it names
        # as no longer ours.)  And the nodes the region says we are to let
        # go of, known before or not: one learnt only after it was marked (a
        # late listing, a power command meanwhile) is in no such difference.
        # Stop driving them (unreported: their operations go on with the
        # next owner), then say so, so the next owner may start.
        if changed_since is None:
            gone = sorted((known_before | releasing) - listed)
        else:
            gone = sorted(((known_before & not_ours) | releasing) - listed)
        cursor = None if cursor is False else cursor
        unreleased = self.link.unreleased
        unreleased.difference_update(listed)  # ours again: nothing to release
        if gone:
            self.log.info("{n} node(s) no longer ours: handing them over", n=len(gone))
            await defer.DeferredList([
                self.pserv.forget_node(node, "handed over to another pserv", report=False)
                for node in gone])
            unreleased.update(gone)
        release = sorted(unreleased)
        for start in range(0, len(release), 200):
            chunk = release[start:start + 200]
            await self.callRemote(commands.ReleaseNodes, nodes=chunk)
            unreleased.difference_update(chunk)
        return cursor

    def _hello_failed(self, failure):
        if expected(failure, *_HELLO):
            self.log.error("region hand-shake failed: {why}", why=failure.getErrorMessage())
        else:
            self.log.failure("region hand-shake failed unexpectedly", failure)
        self.transport.loseConnection()

    def _beat(self):
        sent = self.clock.seconds()
        d = self.callRemote(commands.Heartbeat, actions_in_flight=self.pserv.in_flight())
        d.addCallback(lambda answer: self._renewed(sent, answer["lease"]))
        d.addErrback(self._beat_failed)
        return None

    def _renewed(self, sent, remaining):
        if self.keeper is not None and self.epoch is not None:
            self.keeper.granted(self.epoch, sent, remaining)

    def _beat_failed(self, failure):
        if failure.check(*NO_ANSWER):
            return None  # the connection is going; ClientService reconnects
        if failure.check(commands.LeaseExpired):
            self.log.warn("the region says our lease is over: going quiet, registering again")
            if self._lease_lost is not None:
                self._lease_lost()
            self.transport.loseConnection()
            return None
        self.log.failure("heartbeat refused by the region", failure)
        return None

    def connectionLost(self, reason):
        self.alive = False
        self.link.lost(self)
        # A walk the region gave up on keeps its snapshot (megabytes at
        # 10,000 busy nodes) only as long as the connection.
        self.__dict__.pop("_activity_walk", None)
        self.__dict__.pop("_slots_walk", None)
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        super().connectionLost(reason)

    # -- region → pserv ------------------------------------------------------

    def _power(self, action, operation_id, node, power, epoch, lockouts=None, circuit=None):
        self.gate.check()
        if lockouts is not None and not isinstance(lockouts, list):
            raise commands.BadArguments("lockouts must be a list")
        try:
            disposition, into = self.pserv.dispatch(operation_id, node, action, power, epoch,
                                                    lockouts=lockouts,
                                                    **_circuit_kw(circuit))
        except InvalidPowerDocument as e:
            raise commands.UnusablePowerConfig(str(e))
        except NotOurs as e:
            raise commands.StaleEpoch(str(e))
        return {"disposition": disposition, "coalesced_into": into}

    @commands.PowerOn.responder
    def power_on(self, operation_id, node, power, epoch, lockouts=None, circuit=None):
        return self._power(Action.ON.value, operation_id, node, power, epoch, lockouts, circuit)

    @commands.PowerOff.responder
    def power_off(self, operation_id, node, power, epoch, lockouts=None, circuit=None):
        return self._power(Action.OFF.value, operation_id, node, power, epoch, lockouts, circuit)

    @commands.PowerSoftOff.responder
    def power_soft_off(self, operation_id, node, power, epoch, lockouts=None, circuit=None):
        return self._power(Action.SOFT_OFF.value, operation_id, node, power, epoch, lockouts,
                           circuit)

    @commands.PowerCycle.responder
    def power_cycle(self, operation_id, node, power, epoch, lockouts=None, circuit=None):
        return self._power(Action.CYCLE.value, operation_id, node, power, epoch, lockouts,
                           circuit)

    @commands.PowerQuery.responder
    def power_query(self, operation_id, node, power, epoch, lockouts=None, circuit=None):
        return self._power(Action.QUERY.value, operation_id, node, power, epoch, lockouts,
                           circuit)

    @commands.PowerFence.responder
    def power_fence(self, operation_id, node, power, epoch, lockouts=None, circuit=None):
        return self._power(Action.FENCE.value, operation_id, node, power, epoch, lockouts,
                           circuit)

    @commands.PowerMany.responder
    def power_many(self, operations, epoch):
        """
        A page of a bulk request's operations (issue 14), each dispatched
        as the single power commands would; every one is checked before any
        starts, so a malformed box starts nothing.
        """
        self.gate.check()
        checked = _checked_batch(operations)
        if self.pserv.epoch is None or epoch != self.pserv.epoch:
            raise commands.StaleEpoch(f"{len(checked)} operation(s) under epoch {epoch}: "
                                      f"our lease is {self.pserv.epoch}")
        results = []
        for op in checked:
            result = {"id": op["id"], "disposition": "", "coalesced_into": 0, "refused": "",
                      "error": ""}
            try:
                result["disposition"], result["coalesced_into"] = self.pserv.dispatch(
                    op["id"], op["node"], op["action"], op["power"], epoch,
                    lockouts=op.get("lockouts"), **_circuit_kw(op.get("circuit")))
            except InvalidPowerDocument as e:
                result.update(refused="INVALID_POWER_CONFIG", error=str(e)[:300])
            except NotOurs as e:  # our lease changed meanwhile (checked above)
                result.update(refused="STALE_EPOCH", error=str(e)[:300])
            results.append(result)
        return {"results": results}

    @commands.Refresh.responder
    def refresh(self):
        self.gate.check()
        d = defer.ensureDeferred(self.recover())
        d.addErrback(self._refresh_failed)
        return {}

    def _refresh_failed(self, failure):
        if failure.check(*NO_ANSWER, commands.LeaseExpired):
            return None  # going away, or our lease is over: nothing to refresh for
        self.log.failure("refresh asked by the region failed", failure)
        return None

    @commands.ForgetNode.responder
    def forget_node(self, node, reason):
        self.gate.check()
        d = self.pserv.forget_node(node, reason or "forgotten")
        return d.addCallback(lambda cancelled: {"cancelled": cancelled})

    @commands.ClearLockout.responder
    def clear_lockout(self, node):
        self.gate.check()
        guard = getattr(self.pserv.executor, "lockout", None)
        if guard is not None:
            guard.release(node)
            self.log.info("lock-out of node {node} cleared by the region", node=node)
        return {}

    @commands.CancelOperation.responder
    def cancel_operation(self, operation_id, reason):
        self.gate.check()
        settled = self.pserv.cancel(operation_id, reason or "cancelled by an operator")
        if settled is None:
            return {"known": False, "outcome": ""}
        return settled.addCallback(lambda report: {"known": True, "outcome": report.outcome})

    @commands.ConfirmOperation.responder
    def confirm_operation(self, operation_id, state):
        self.gate.check()
        if state not in TARGET_STATES:
            raise commands.BadArguments(f"state must be on or off, not {state!r}")
        try:
            return {"confirmed": self.pserv.confirm(operation_id, state)}
        except NotConfirmable as e:
            raise commands.NotConfirmable(str(e)) from None

    @commands.ListActions.responder
    def list_actions(self, after_node, limit, node=None):
        self.gate.check()
        limit = max(1, min(limit, 200))
        registry = self.pserv.registry
        if node:
            walk = _encode_walk(lambda: registry.activity(node), lambda a: a.node, activity_json)
        else:  # the first page encodes the walk's snapshot; the next ones are cut from it
            walk = _walk_snapshot(self, "_activity_walk", not after_node, lambda: _encode_walk(
                registry.activity, lambda a: a.node, activity_json))
        names, encoded = walk
        start = bisect.bisect_right(names, after_node)
        count, page = _page(encoded, start, limit)
        done = start + count >= len(names)
        if done and not node:
            self.__dict__.pop("_activity_walk", None)
        return {"nodes": page, "done": done, "now": self.clock.seconds()}

    @commands.ListSlots.responder
    def list_slots(self, after_priority, after_seq, limit, node=None):
        self.gate.check()
        limit = max(1, min(limit, 200))
        slots = getattr(self.pserv.executor, "slots", None)
        if slots is None:
            return {"size": 0, "busy": 0, "waiting": 0, "holding": b"[]", "queue": b"[]",
                    "done": True, "now": self.clock.seconds()}

        def take():
            state = {}

            def queue():
                state.update(slots.snapshot())
                return [w for w in state["queue"] if not node or w.get("node") == node]

            keys, encoded = _encode_walk(queue, lambda w: (-w["priority"], w["seq"]),
                                         lambda w: w)
            holding = [h for h in state["holding"] if not node or h.get("node") == node]
            return (state["size"], state["busy"], len(state["queue"]),
                    _page([json.dumps(h).encode() for h in holding], 0, len(holding))[1],
                    keys, encoded)

        size, busy, waiting, holding, keys, encoded = _walk_snapshot(
            self, "_slots_walk", after_seq < 0 or bool(node), take)
        start = 0 if after_seq < 0 else bisect.bisect_right(keys, (-after_priority, after_seq))
        count, page = _page(encoded, start, limit)
        done = start + count >= len(keys)
        if done:
            self.__dict__.pop("_slots_walk", None)
        return {"size": size, "busy": busy, "waiting": waiting, "holding": holding,
                "queue": page, "done": done, "now": self.clock.seconds()}


#: The later pages of a walk (ListActions, ListSlots) are cut from the
#: snapshot its first page took, while it is younger than this (seconds).
_WALK_TTL = 10.0
#: At most this many joined operation ids per action in ListActions.
_JOINED_SHOWN = 50


def _walk_snapshot(protocol, name, fresh, take):
    """``take()``, or what the current walk on ``protocol`` took already."""
    now = protocol.clock.seconds()
    cached = protocol.__dict__.get(name)
    if fresh or cached is None or now - cached[0] > _WALK_TTL:
        cached = (now, take())
        setattr(protocol, name, cached)
    return cached[1]


def _encode_walk(take, key, to_json):
    """
    ``(keys, encoded)``: the sort key and the JSON bytes of each item of
    ``take()``.  Only bytes outlive this call, and the garbage collector is
    paused while the (acyclic, short-lived) snapshot exists, so that 10,000
    busy nodes never make it walk the pserv's whole heap.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        items = take()
        return ([key(i) for i in items],
                [json.dumps(to_json(i), separators=(",", ":")).encode("utf-8") for i in items])
    finally:
        if enabled:
            gc.enable()


def _page(encoded, start, limit):
    """``(count, JSON array)`` of up to ``limit`` items from ``start`` within one AMP value."""
    size, count = 2, 0
    for item in encoded[start:start + limit]:
        size += len(item) + 1
        if size > commands.MAX_VALUE and count:
            break
        count += 1
    return count, b"[" + b",".join(encoded[start:start + count]) + b"]"


def activity_json(activity):
    def info(i):
        if i is None:
            return None
        return {"operation_id": i.operation_id, "action": i.action.value,
                "joined": list(i.joined[:_JOINED_SHOWN]), "joined_total": len(i.joined),
                "started_at": i.started_at, "queued_at": i.queued_at,
                "stopping": i.stopping}

    return {"node": activity.node, "running": info(activity.running),
            "waiting": info(activity.waiting), "query": info(activity.query)}


#: What ``PowerMany`` may carry: every power action but a fence (node by node).
_BATCH_ACTIONS = frozenset(a.value for a in Action if a is not Action.FENCE)


def _checked_batch(operations):
    """``PowerMany``'s operations, each well-formed, or BadArguments naming the first that is not."""
    if not isinstance(operations, list):
        raise commands.BadArguments("operations must be a list")
    for index, op in enumerate(operations):
        where = f"operations[{index}]"
        if not isinstance(op, dict):
            raise commands.BadArguments(f"{where} must be an object")
        if type(op.get("id")) is not int or op["id"] <= 0:
            raise commands.BadArguments(f"{where}.id must be a positive integer")
        if not isinstance(op.get("node"), str) or not op["node"] or "\x00" in op["node"]:
            raise commands.BadArguments(f"{where}.node must be a node name")
        if op.get("action") not in _BATCH_ACTIONS:
            raise commands.BadArguments(f"{where}.action must be one of "
                                        f"{', '.join(sorted(_BATCH_ACTIONS))}")
        if "power" not in op:
            raise commands.BadArguments(f"{where}.power is missing")
        if op.get("lockouts") is not None and not isinstance(op["lockouts"], list):
            raise commands.BadArguments(f"{where}.lockouts must be a list")
        if op.get("circuit") is not None and not isinstance(op["circuit"], dict):
            raise commands.BadArguments(f"{where}.circuit must be an object")
    return operations


def _report_json(report):
    """One report as ``ReportOutcomes`` carries it (a long error cut to fit)."""
    return {"operation_id": report.operation_id, "outcome": report.outcome,
            "observed_state": report.observed_state, "agent": report.agent,
            "error": report.error[:4000], "error_kind": report.error_kind or None,
            "detail": report.detail, "coalesced_into": report.coalesced_into,
            "superseded_by": report.superseded_by}


def _circuit_kw(circuit):
    """``circuit=`` only when the region sent one (pservs' cores without circuits)."""
    return {"circuit": circuit} if circuit else {}
