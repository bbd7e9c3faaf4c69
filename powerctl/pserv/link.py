"""
The pserv's side of AMP: the protocol a region talks to, the hand-shake
(authenticate, register, recover) and the link that carries reports to
whichever region is connected.
"""

import collections

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.protocols import amp

from powerctl import __version__
from powerctl.pserv.executor import InvalidConfig
from powerctl.rpc import auth, commands


class RegionLink:
    """
    Reports go to one connected, authenticated region (they share one
    database, so any will do).  With none connected they wait in a bounded
    outbox; what overflows is not lost for good, because the region re-sends
    unfinished operations on reconnect and the pserv re-reports them.
    """

    log = Logger()

    def __init__(self, outbox_size=10_000):
        self._connected = []
        self._outbox = collections.deque(maxlen=outbox_size)

    def ready(self, protocol):
        self._connected.append(protocol)
        self.flush()

    def lost(self, protocol):
        if protocol in self._connected:
            self._connected.remove(protocol)

    @property
    def connected(self):
        return bool(self._connected)

    def report(self, report):
        self._outbox.append(report)
        self.flush()

    def flush(self):
        while self._outbox and self._connected:
            report = self._outbox.popleft()
            protocol = self._connected[0]
            d = protocol.callRemote(
                commands.ReportOutcome,
                operation_id=report.operation_id, outcome=report.outcome,
                observed_state=report.observed_state, agent=report.agent,
                error=report.error[:4000], coalesced_into=report.coalesced_into,
                superseded_by=report.superseded_by,
            )
            d.addErrback(self._undelivered, report)

    def _undelivered(self, failure, report):
        self.log.warn("outcome of {op} not delivered ({why}); keeping it",
                      op=report.operation_id, why=failure.getErrorMessage())
        self._outbox.appendleft(report)

    def refresh(self):
        """
        Page through recovery again on one connection: learns nodes added or
        changed since, and re-dispatches any operation whose dispatch was
        lost (operations already here are recognised by id and skipped).
        """
        if not self._connected:
            return defer.succeed(None)
        d = defer.ensureDeferred(self._connected[0].recover())
        d.addErrback(lambda f: self.log.warn("refresh from the region failed: {why}",
                                             why=f.getErrorMessage()))
        return d

    def send_states(self, states):
        if not self._connected:
            return defer.succeed(None)
        d = self._connected[0].callRemote(commands.ReportPowerState, states=states)
        d.addErrback(lambda f: self.log.warn("power states not delivered: {why}",
                                             why=f.getErrorMessage()))
        return d


class PservProtocol(amp.AMP):
    """One connection to one region."""

    log = Logger()

    def __init__(self, pserv, link, settings, secret, clock):
        super().__init__()
        self.pserv = pserv
        self.link = link
        self.settings = settings
        self.secret = secret
        self.clock = clock
        self.gate = auth.Gate()
        self._heartbeat = None
        self.handshake = None

    def connectionMade(self):
        super().connectionMade()
        self.handshake = defer.ensureDeferred(self._hello())
        self.handshake.addErrback(self._hello_failed)

    async def _hello(self):
        challenge = await self.callRemote(commands.Challenge)
        my_nonce = auth.new_nonce()
        answer = await self.callRemote(
            commands.Authenticate,
            proof=auth.proof(self.secret, challenge["nonce"]), nonce=my_nonce)
        if not auth.valid(self.secret, my_nonce, answer["proof"]):
            raise commands.AuthenticationFailed("the region does not hold our secret")
        self.gate.open = True
        await self.callRemote(
            commands.Register, cluster=self.settings.cluster,
            name=self.settings.name, version=__version__)
        await self.recover()
        self.link.ready(self)
        self._heartbeat = task.LoopingCall(self._beat)
        self._heartbeat.clock = self.clock
        self._heartbeat.start(self.settings.heartbeat_interval, now=True).addErrback(
            lambda f: None)

    async def recover(self):
        """Page through the region's ``Recover`` and converge on it."""
        after_op, after_node, started = 0, "", 0
        while True:
            page = await self.callRemote(
                commands.Recover, after_op=after_op, after_node=after_node)
            for node in page["nodes"]:
                self.pserv.configure(node["name"], node["power"])
            for op in page["operations"]:
                try:
                    if self.pserv.dispatch(op["id"], op["node"], op["action"],
                                           op["power"])[0] != "known":
                        started += 1
                except InvalidConfig as e:
                    self.log.warn("recovered operation {op} unusable: {why}", op=op["id"], why=e)
            after_op, after_node = page["after_op"], page["after_node"]
            if page["done"]:
                break
        if started:
            self.log.info("took {n} operation(s) from the region's journal", n=started)

    def _hello_failed(self, failure):
        self.log.error("region hand-shake failed: {why}", why=failure.getErrorMessage())
        self.transport.loseConnection()

    def _beat(self):
        d = self.callRemote(commands.Heartbeat, actions_in_flight=self.pserv.in_flight())
        d.addErrback(lambda f: None)
        return None

    def connectionLost(self, reason):
        self.link.lost(self)
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        super().connectionLost(reason)

    # -- region → pserv ------------------------------------------------------

    def _power(self, action, operation_id, node, power):
        self.gate.check()
        try:
            disposition, into = self.pserv.dispatch(operation_id, node, action, power)
        except InvalidConfig as e:
            raise commands.InvalidPowerConfig(str(e))
        return {"disposition": disposition, "coalesced_into": into}

    @commands.PowerOn.responder
    def power_on(self, operation_id, node, power):
        return self._power("on", operation_id, node, power)

    @commands.PowerOff.responder
    def power_off(self, operation_id, node, power):
        return self._power("off", operation_id, node, power)

    @commands.PowerSoftOff.responder
    def power_soft_off(self, operation_id, node, power):
        return self._power("soft-off", operation_id, node, power)

    @commands.PowerCycle.responder
    def power_cycle(self, operation_id, node, power):
        return self._power("cycle", operation_id, node, power)

    @commands.PowerQuery.responder
    def power_query(self, operation_id, node, power):
        return self._power("query", operation_id, node, power)

    @commands.ListActions.responder
    def list_actions(self, after_node, limit):
        self.gate.check()
        limit = max(1, min(limit, 200))
        page = [a for a in self.pserv.registry.activity() if a.node > after_node]
        return {"nodes": [activity_json(a) for a in page[:limit]], "done": len(page) <= limit}


def activity_json(activity):
    def info(i):
        if i is None:
            return None
        return {"operation_id": i.operation_id, "action": i.action.value,
                "joined": list(i.joined), "started_at": i.started_at, "stopping": i.stopping}

    return {"node": activity.node, "running": info(activity.running),
            "waiting": info(activity.waiting), "query": info(activity.query)}
