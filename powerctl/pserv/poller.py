"""
Periodic power-state polling of the nodes a pserv knows.

Nodes with a change in play or waiting are skipped (the change will report
its own state).  Polls are ordinary registry queries, so they coalesce with
any query already running for the node, and at most ``concurrency`` run at
once.  Results go to the region in one batch per round.
"""

import itertools

from twisted.internet import defer, task
from twisted.logger import Logger

from powerctl.registry import PowerAction


class Poller:
    log = Logger()

    def __init__(self, registry, executor, link, clock, interval, concurrency):
        self.registry = registry
        self.executor = executor
        self.link = link
        self.clock = clock
        self.interval = interval
        self._slots = defer.DeferredSemaphore(concurrency)
        self._ids = itertools.count(1)
        self._loop = task.LoopingCall(self.poll_once)
        self._loop.clock = clock

    def start(self):
        self._loop.start(self.interval, now=False).addErrback(
            lambda f: self.log.failure("poller stopped", f))

    def stop(self):
        if self._loop.running:
            self._loop.stop()

    def poll_once(self):
        """One round: refresh what we know, query every idle node, report."""
        if not self.link.connected:
            return None
        return self.link.refresh().addCallback(lambda _: self._poll())

    def _poll(self):
        nodes = [n for n in self.executor.known_nodes() if not self.registry.busy(n)]
        return defer.DeferredList(
            [self._slots.run(self._query, n) for n in nodes], consumeErrors=True,
        ).addCallback(self._report, nodes)

    def _query(self, node):
        action = PowerAction(node=node, action="query", operation_id=f"poll-{next(self._ids)}")
        return self.registry.submit(action)

    def _report(self, results, nodes):
        states = []
        for node, (ok, value) in zip(nodes, results):
            if ok:
                states.append({"node": node, "state": value.state.value, "error": ""})
            else:
                kind = getattr(value.value, "kind", "error")
                states.append({"node": node, "state": "error",
                               "error": f"{kind}: {value.getErrorMessage()}"[:2000]})
        # Keep each AMP value well under 64 KiB.
        batches = [states[i:i + 200] for i in range(0, len(states), 200)]
        return defer.DeferredList([self.link.send_states(b) for b in batches])
