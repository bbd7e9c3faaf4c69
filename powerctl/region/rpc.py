"""
The region's side of AMP: authenticating pservs, recovery pages, outcome
and state reports, and the directory of connected pservs per cluster.
"""

import json

from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols import amp

from powerctl.region.errors import InvalidInput, NotFound
from powerctl.rpc import auth, commands

PAGE = 100  # items per recovery page; also trimmed by size below


def _fits(items):
    return len(json.dumps(items, separators=(",", ":"))) <= commands.MAX_VALUE


def _trim(items):
    """Drop items from the end until the page fits one AMP value."""
    while items and not _fits(items):
        items = items[: max(1, len(items) // 2)] if len(items) > 1 else []
    return items


class PservDirectory:
    """The authenticated, registered pserv connections of this region."""

    def __init__(self):
        self._by_cluster = {}

    def add(self, protocol):
        self._by_cluster.setdefault(protocol.cluster, []).append(protocol)

    def remove(self, protocol):
        members = self._by_cluster.get(protocol.cluster, [])
        if protocol in members:
            members.remove(protocol)

    def for_cluster(self, cluster):
        """Live connections of ``cluster``, least busy first."""
        return sorted(self._by_cluster.get(cluster, []), key=lambda p: p.in_flight)

    def all(self):
        return [p for members in self._by_cluster.values() for p in members]


class RegionProtocol(amp.AMP):
    """One pserv's connection to this region."""

    log = Logger()

    def __init__(self, region):
        super().__init__()
        self.region = region
        self.gate = auth.Gate()
        self.cluster = None
        self.pserv = None
        self.in_flight = 0
        self.last_heard = region.clock.seconds()
        self._unknown_nodes = set()  # logged once each

    def locateResponder(self, name):
        """Every responder's work is tracked, so a stopping region waits for it."""
        responder = super().locateResponder(name)
        if responder is None:
            return None
        return lambda box: self.region.track(responder(box))

    def _registered(self):
        self.gate.check()
        if self.pserv is None:
            raise commands.UnknownPserv("register first")
        self.last_heard = self.region.clock.seconds()

    @commands.Challenge.responder
    def challenge(self):
        self.gate.nonce = auth.new_nonce()
        return {"nonce": self.gate.nonce}

    @commands.Authenticate.responder
    def authenticate(self, proof, nonce):
        if not auth.valid(self.region.secret, self.gate.nonce, proof):
            self.log.warn("refused a peer without the shared secret: {peer}",
                          peer=self.transport.getPeer())
            raise commands.AuthenticationFailed("wrong proof of the shared secret")
        self.gate.open = True
        return {"proof": auth.proof(self.region.secret, nonce)}

    @commands.Register.responder
    async def register(self, cluster, name, version):
        self.gate.check()
        if not cluster or not name:
            raise commands.BadArguments("cluster and name must not be empty")
        await self.region.store.register_pserv(name, cluster, version, self.region.name)
        self.cluster, self.pserv = cluster, name
        self.region.directory.add(self)
        self.log.info("pserv {name} of cluster {cluster} connected", name=name, cluster=cluster)
        return {"region": self.region.name}

    @commands.Recover.responder
    async def recover(self, after_op, after_node):
        self._registered()
        store = self.region.store
        ops_page = []
        if after_op >= 0:
            ops = await store.outstanding_ops(self.cluster, after_id=after_op, limit=PAGE)
            for op in ops:
                if op["power"] is None:  # its configuration no longer resolves
                    await self.region.outcome(op["id"], "failed", None, None,
                                              f"config: {op.get('power_error')}",
                                              None, None, self.pserv)
            ops_page = _trim([_op_json(o) for o in ops if o["power"] is not None])
            if len(ops) == PAGE or len(ops_page) < len(ops):
                # Every op of a page may have been unusable (failed above):
                # the cursor then moves past the whole page.
                last = ops_page[-1]["id"] if ops_page else ops[-1]["id"]
                return {"operations": ops_page, "nodes": [], "after_op": last,
                        "after_node": "", "done": False}
            after_op = -1  # operations exhausted: nodes from now on
        nodes = await store.desired_states(self.cluster, after_name=after_node, limit=PAGE)
        usable = [n for n in nodes if n["power"] is not None]
        page = _trim([_node_json(n) for n in usable])
        full = len(nodes) == PAGE or len(page) < len(usable)
        last = page[-1]["name"] if page else (nodes[-1]["node"] if nodes else after_node)
        return {"operations": ops_page, "nodes": page, "after_op": after_op,
                "after_node": last, "done": not full}

    @commands.ReportOutcome.responder
    async def report_outcome(self, operation_id, outcome, observed_state, agent, error,
                             coalesced_into, superseded_by):
        self._registered()
        if outcome not in ("succeeded", "failed", "superseded", "cancelled"):
            raise commands.BadArguments(f"unknown outcome {outcome!r}")
        if observed_state not in ("", "on", "off"):
            raise commands.BadArguments(f"unknown observed state {observed_state!r}")
        try:
            recorded = await self.region.outcome(
                operation_id, outcome, observed_state or None, agent or None, error or None,
                coalesced_into or None, superseded_by or None, self.pserv)
        except InvalidInput as e:
            raise commands.BadArguments(str(e)) from None
        return {"recorded": bool(recorded)}

    @commands.ReportPowerState.responder
    async def report_power_state(self, states):
        self._registered()
        if not isinstance(states, list) or not all(
            isinstance(s, dict) and isinstance(s.get("node"), str)
            and s.get("state") in ("on", "off", "unknown", "error") for s in states
        ):
            raise commands.BadArguments("states must be [{node, state, error}]")
        for s in states:
            # One bad node never costs the rest of the batch its update.
            try:
                await self.region.store.record_power_state(
                    s["node"], s["state"], error=s.get("error") or None)
            except NotFound:
                if s["node"] not in self._unknown_nodes:
                    self._unknown_nodes.add(s["node"])
                    self.log.warn("pserv {p} reported on node {n}, which does not exist;"
                                  " dropped", p=self.pserv, n=s["node"])
            except InvalidInput as e:
                self.log.warn("pserv {p}: report for node {n} refused: {why}",
                              p=self.pserv, n=s["node"], why=e)
        return {}

    @commands.Heartbeat.responder
    async def heartbeat(self, actions_in_flight):
        self._registered()
        self.in_flight = actions_in_flight
        await self.region.store.heartbeat(self.pserv, actions_in_flight)
        return {}

    def connectionLost(self, reason):
        super().connectionLost(reason)
        if self.pserv is not None:
            self.region.directory.remove(self)
            self.log.info("pserv {name} disconnected", name=self.pserv)
            d = self.region.track(defer.ensureDeferred(self.region.pserv_lost(self)))
            d.addErrback(lambda f: self.log.failure("after losing {p}", f, p=self.pserv))


def _op_json(op):
    return {"id": op["id"], "node": op["node"], "action": op["action"], "power": op["power"]}


def _node_json(node):
    return {"name": node["node"], "desired_state": node.get("desired_state"),
            "power": node["power"]}
