"""
The region's coordination: dispatching journalled operations to a live
pserv of the node's cluster, recording outcomes, and re-dispatching when a
pserv goes away.

The database is the source of truth; this object only ever *re-sends*
what the journal says is unfinished, and pservs drop what they already
have (by operation id), so sending twice is harmless and losing a message
is repaired by the next (re)connection.
"""

from twisted.internet import defer, task
from twisted.logger import Logger

from powerctl.rpc import commands
from powerctl.region.rpc import PservDirectory


class Region:
    log = Logger()

    def __init__(self, name, store, secret, clock, heartbeat_timeout=30.0):
        self.name = name
        self.store = store
        self.secret = secret
        self.clock = clock
        self.heartbeat_timeout = heartbeat_timeout
        self.directory = PservDirectory()
        self._busy = set()  # Deferreds of work still using the database
        self.stopping = False
        self._reaper = task.LoopingCall(self.drop_silent_pservs)
        self._reaper.clock = clock

    def start(self):
        self._reaper.start(max(1.0, self.heartbeat_timeout / 3), now=False)

    def stop(self):
        self.stopping = True
        if self._reaper.running:
            self._reaper.stop()
        for protocol in self.directory.all():
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
        waits = [defer.Deferred() for _ in self._busy]
        for busy, wait in zip(list(self._busy), waits):
            busy.addBoth(lambda result, w=wait: (w.callback(None), result)[1])
        d = defer.DeferredList(waits)
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
        ``action``) to a live pserv of its node's cluster.  With none live it
        stays ``pending`` and goes out on the next (re)connection.
        """
        node = await self.store.get_node(op["node"])
        power = await self.store.node_power_config(op["node"])
        for protocol in self.directory.for_cluster(node["cluster"]):
            command = commands.POWER_COMMANDS[op["action"]]
            try:
                answer = await protocol.callRemote(
                    command, operation_id=op["id"], node=op["node"], power=power)
            except commands.InvalidPowerConfig as e:
                await self.store.record_outcome(
                    op["id"], "failed", error=f"config: {e}", pserv=protocol.pserv)
                return "failed"
            except Exception as e:  # connection gone mid-call: try the next one
                self.log.warn("dispatch of {op} to {p} failed: {why}",
                              op=op["id"], p=protocol.pserv, why=e)
                continue
            await self.store.mark_running(op["id"], protocol.pserv)
            return answer["disposition"]
        self.log.info("operation {op}: no live pserv in cluster {c}; it waits",
                      op=op["id"], c=node["cluster"])
        return "pending"

    def dispatch_later(self, op):
        """Fire-and-forget dispatch for the API (which has answered 202)."""
        d = self.track(defer.ensureDeferred(self.dispatch(op)))
        d.addErrback(lambda f: self.log.failure("dispatch of {op}", f, op=op["id"]))
        return d

    # -- reports --------------------------------------------------------------

    async def outcome(self, op_id, outcome, observed_state, agent, error,
                      coalesced_into, superseded_by, pserv):
        recorded = await self.store.record_outcome(
            op_id, outcome, observed_state=observed_state, agent=agent, error=error,
            coalesced_into=coalesced_into, superseded_by=superseded_by, pserv=pserv)
        if recorded.changed:
            op = recorded.op
            if observed_state is not None:
                await self.store.record_power_state(op["node"], observed_state)
            elif outcome == "failed":
                # The node's last error says why; a failed change is not a
                # failed poll, so it does not count against responsiveness.
                await self.store.record_power_state(
                    op["node"], "error", error=error or "failed",
                    queried=op["action"] == "query")
        return recorded.changed

    # -- pservs coming and going -----------------------------------------------

    async def pserv_lost(self, protocol):
        if self.stopping:
            return  # we dropped it ourselves; it will register with our successor
        await self.store.pserv_disconnected(protocol.pserv, region=self.name)
        if self.directory.for_cluster(protocol.cluster):
            # Others of the cluster are alive: they take over what was sent
            # to the lost one (each drops what it already has).
            after = 0
            while True:
                ops = await self.store.outstanding_ops(protocol.cluster, after_id=after,
                                                       limit=500)
                for op in ops:
                    if op.get("pserv") in (None, protocol.pserv):
                        await self.dispatch(op)
                if len(ops) < 500:
                    break
                after = ops[-1]["id"]

    def drop_silent_pservs(self):
        """Drop connections whose pserv stopped heart-beating (half-open TCP)."""
        now = self.clock.seconds()
        for protocol in self.directory.all():
            if now - protocol.last_heard > self.heartbeat_timeout:
                self.log.warn("pserv {p} silent for {s:.0f}s: dropping it",
                              p=protocol.pserv, s=now - protocol.last_heard)
                protocol.transport.abortConnection()
