"""
The region's side of AMP: authenticating pservs, recovery pages, outcome
and state reports, and the directory of connected pservs per cluster.
"""

import hashlib
import json

from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols import amp

from powerctl.power import POWER_STATES, TERMINAL_STATES, OpState, PowerState
from powerctl.region import pservcreds
from powerctl.region.errors import InvalidInput, NotFound, StaleEpoch
from powerctl.region.store.base import MAX_BIGINT
from powerctl.region.leases import LeaseExpired
from powerctl.rpc import auth, commands, responders

#: Items per recovery page, also trimmed by size (:func:`_trim`).  Not
#: more: a resolved SNMP or Redfish node is 300-400 bytes, so a page of 250
#: was trimmed every time (rows read and resolved for nothing, and more
#: CPU per full recovery at 10,000 nodes, no faster: bench/RESULTS.md).
#: Full recoveries are rare now that refreshes are incremental.  (Any size
#: pages correctly, the same constant being the limit and the full-page
#: test: make mutate's +-1 here is equivalent.)
PAGE = 100
#: Names of nodes awaiting release in a Recover's last page: 100 names of
#: at most 255 characters fit one AMP value beside the page; more wait for
#: the next recovery (every assignment round asks for one while any waits).
RELEASING_PAGE = 100


def error_text(kind, message):
    """
    How the journal and a node's ``last_error`` word a failure of ``kind``:
    ``"kind: message"``.  The kind travels over AMP in a field of its own
    (``error_kind``); this is the one place that joins the two for people.
    """
    return f"{kind}: {message}" if kind else message


def _trim(items):
    """
    The longest prefix of ``items`` that fits one AMP value, each item
    encoded once.  (Halving a page that did not fit threw away up to half
    of what the region had read and resolved for it.)
    """
    # (A page of exactly MAX_VALUE bytes kept here or by the loop below, whose
    # total is then MAX_VALUE too: make mutate's ``<`` is equivalent.)
    if len(json.dumps(items, separators=(",", ":"))) <= commands.MAX_VALUE:
        return items  # the usual case: one encoding of the whole page
    total = 2  # the brackets
    for index, item in enumerate(items):
        total += len(json.dumps(item, separators=(",", ":"))) + (1 if index else 0)
        if total > commands.MAX_VALUE:
            return items[:index]
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

    def by_epoch(self, epoch):
        """The connection of the pserv holding the lease ``epoch``, if it is here."""
        return next((p for p in self.all() if p.epoch == epoch), None)


class RegionProtocol(amp.AMP):
    """
    One pserv's connection to this region.  A peer that has not
    authenticated within :attr:`auth_timeout` seconds is disconnected, and
    an address holding :data:`powerctl.region.peers.MAX_PER_ADDRESS`
    unauthenticated connections has the next ones closed at once.
    """

    log = Logger()

    #: Seconds a new connection has to authenticate before it is closed.
    auth_timeout = 10.0

    def __init__(self, region):
        super().__init__()
        self.region = region
        self.gate = auth.Gate()
        self.admission = None  # issue 10: what its credential admits it to
        self.cluster = None
        self.pserv = None
        self.epoch = None  # the lease this connection's pserv holds
        self.in_flight = 0
        self.last_heard = region.clock.seconds()
        self._unknown_nodes = set()  # logged once each
        self._auth_timer = None
        self._pending_as = None  # the address this connection is counted under, until it authenticates

    def connectionMade(self):
        super().connectionMade()
        peer = self.transport.getPeer()
        address = getattr(peer, "host", None) or str(peer)
        pending = self.region.pending_peers
        if not pending.admit(address):
            if pending.first_refusal(address):
                self.log.warn("peer {address} holds {n} connections that have not "
                              "authenticated: closing its new ones until fewer are pending",
                              address=address, n=pending.pending(address))
            self.transport.abortConnection()
            return
        self._pending_as = address
        self._auth_timer = self.region.clock.callLater(self.auth_timeout, self._auth_expired)

    def _authenticated_or_gone(self):
        """This connection no longer counts against its address's pending ones."""
        if self._pending_as is not None:
            self.region.pending_peers.leave(self._pending_as)
            self._pending_as = None

    def _auth_expired(self):
        self._auth_timer = None
        if not self.gate.open:
            self.log.warn("peer {peer} did not authenticate within {t} s: closing the "
                          "connection", peer=self.transport.getPeer(), t=self.auth_timeout)
            self.transport.loseConnection()

    def _stop_auth_timer(self):
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        self._auth_timer = None

    def locateResponder(self, name):
        """
        Every responder's work is tracked, so a stopping region waits for it,
        and answers only declared errors (:func:`powerctl.rpc.responders.guard`:
        a bug is ``INTERNAL_ERROR``, never a dropped connection; a box missing
        an argument before authentication closes it).
        """
        responder = super().locateResponder(name)
        if responder is None:
            return None
        guarded = responders.guard(self, name, responder, self.log,
                                   fatal=lambda: not self.gate.open)
        return lambda box: self.region.track(guarded(box))

    def _registered(self):
        self.gate.check()
        if self.pserv is None:
            raise commands.UnknownPserv("register first")
        self.last_heard = self.region.clock.seconds()

    def _leased(self, epoch=None):
        """Registered, holding a lease, and (given ``epoch``) speaking for it alone."""
        self._registered()
        if self.epoch is None:
            raise commands.LeaseExpired("this connection's lease was released; register again")
        if epoch is not None and epoch != self.epoch:
            self.log.warn("pserv {p} of epoch {mine} sent a report under epoch {other}: refused",
                          p=self.pserv, mine=self.epoch, other=epoch)
            raise commands.StaleEpoch(f"epoch {epoch} is not this connection's ({self.epoch})")

    @commands.Challenge.responder
    def challenge(self):
        self.gate.nonce = auth.new_nonce()
        return {"nonce": self.gate.nonce}

    @commands.Authenticate.responder
    async def authenticate(self, proof, nonce, credential=None):
        # issue 10: a per-cluster credential (or the shared secret, every cluster)
        admission = await pservcreds.admission_for(self.region, credential)
        if admission is None or not auth.valid(admission.key, self.gate.nonce, proof):
            self.log.warn("refused a peer without the shared secret or a live credential: "
                          "{peer}", peer=self.transport.getPeer())
            raise commands.AuthenticationFailed("wrong proof of the shared secret")
        self.admission = admission
        self.gate.open = True
        self._stop_auth_timer()
        self._authenticated_or_gone()
        return {"proof": auth.proof(admission.key, nonce)}

    @commands.Register.responder
    async def register(self, cluster, name, version, instance):
        self.gate.check()
        if not cluster or not name or not instance:
            raise commands.BadArguments("cluster, name and instance must not be empty")
        if self.pserv is not None:
            raise commands.BadArguments("already registered on this connection")
        if not pservcreds.admits(self.admission, cluster):  # issue 10
            self.log.warn("refused pserv {name}: its credential admits cluster {allowed}, "
                          "not {cluster}", name=name, allowed=self.admission.cluster,
                          cluster=cluster)
            raise commands.AuthenticationFailed(
                f"this credential admits cluster {self.admission.cluster!r} only")
        try:
            await self.region.store.clusters.register_pserv(name, cluster, version, self.region.name)
            lease = await self.region.leases.grant(name, cluster, instance)
        except InvalidInput as e:
            raise commands.BadArguments(str(e)) from None
        self.cluster, self.pserv, self.epoch = cluster, name, lease["epoch"]
        self.region.directory.add(self)
        self.log.info("pserv {name} of cluster {cluster} connected under epoch {epoch}",
                      name=name, cluster=cluster, epoch=self.epoch)
        await self.region.assign(cluster)
        return {"region": self.region.name, "epoch": self.epoch, "lease": lease["remaining"]}

    @commands.Recover.responder
    async def recover(self, after_op, after_node, changed_since=None):
        """
        One page of a recovery: open operations first, then nodes -- every
        node of the lease, or (``changed_since``, issue 14) only those
        changed since that cursor plus the names of changed nodes it no
        longer drives.  A recovery's first page carries the cursor to
        resume from (taken before anything is read: see
        :meth:`~powerctl.region.store.nodes.NodeStore.changes_cursor`).
        """
        self._leased()
        if changed_since is not None and not 0 <= changed_since <= MAX_BIGINT:
            raise commands.BadArguments("changed_since: must be a cursor a recovery handed out")
        # The cursors come back as the region handed them out: an operation
        # id (or -1) and a node name.  Anything else is a broken peer, not a
        # database error.
        if after_op > MAX_BIGINT:
            raise commands.BadArguments(f"after_op: must be at most {MAX_BIGINT}")
        if len(after_node) > 255 or "\x00" in after_node:
            raise commands.BadArguments("after_node: must be a node name (at most 255 "
                                        "characters, no NUL)")
        store = self.region.store
        extra = {}
        if after_op == 0 and after_node == "":  # a recovery starts
            cursor = await store.nodes.changes_cursor()
            if cursor is not None:  # None: a store that keeps no cursor (tests)
                extra["cursor"] = cursor
        ops_page = []
        if after_op >= 0:
            ops = await store.ops.outstanding(self.cluster, after_id=after_op, limit=PAGE,
                                              epoch=self.epoch)
            for op in ops:
                if op["power"] is None:  # its configuration no longer resolves
                    await self.region.outcome(op["id"], OpState.FAILED.value, None, None,
                                              error_text("config", op.get("power_error")),
                                              None, None, self.pserv, epoch=self.epoch)
            ops_page = _trim([_op_json(o) for o in ops if o["power"] is not None])
            if ops_page:  # they run there from now on, as a dispatch would say
                await store.ops.mark_running_many([o["id"] for o in ops_page], self.pserv,
                                              self.epoch)
            if len(ops) == PAGE or len(ops_page) < len(ops):
                # Every op of a page may have been unusable (failed above):
                # the cursor then moves past the whole page.
                last = ops_page[-1]["id"] if ops_page else ops[-1]["id"]
                return {"operations": ops_page, "nodes": [], "after_op": last,
                        "after_node": "", "done": False, **extra}
            # (Only after_op >= 0 is tested and the pserv echoes it back: make
            # mutate's -2 is equivalent.)
            after_op = -1  # operations exhausted: nodes from now on
        if changed_since is None:
            nodes = await store.nodes.desired_states(self.cluster, after_name=after_node,
                                                     limit=PAGE, epoch=self.epoch)
        else:
            nodes = await store.nodes.changed_since(self.cluster, changed_since,
                                                    after_name=after_node, limit=PAGE,
                                                    epoch=self.epoch)
        usable = [n for n in nodes if n["power"] is not None and n.get("ours", True)]
        # issue 10: each node's lock-outs go with its configuration
        locked = await store.lockouts.of_nodes([n["node"] for n in usable])
        page = _trim([_node_json(n, locked.get(n["node"], [])) for n in usable])
        full = len(nodes) == PAGE or len(page) < len(usable)
        last = page[-1]["name"] if page else (nodes[-1]["node"] if nodes else after_node)
        if changed_since is not None:
            # the rows up to the page's last (in the database's order)
            upto = len(nodes) if len(page) == len(usable) else (
                next(i for i, n in enumerate(nodes) if n["node"] == last) + 1)
            extra["not_ours"] = [n["node"] for n in nodes[:upto] if not n["ours"]]
        if not full and self.epoch is not None:
            # the last page: what we wait for this pserv to let go of (a
            # connection without a lease -- its lease released on a clean
            # stop -- lists the cluster's nodes and owns none)
            extra["releasing"] = await store.nodes.releasing(
                self.cluster, self.epoch, RELEASING_PAGE)
        return {"operations": ops_page, "nodes": page, "after_op": after_op,
                "after_node": last, "done": not full, **extra}

    @commands.ReportOutcome.responder
    async def report_outcome(self, operation_id, outcome, observed_state, agent, error,
                             coalesced_into, superseded_by, epoch, error_kind=None,
                             detail=None):
        self._leased(epoch)
        if detail is not None and not isinstance(detail, dict):
            raise commands.BadArguments("detail must be a JSON object")
        if outcome not in TERMINAL_STATES:
            raise commands.BadArguments(f"unknown outcome {outcome!r}")
        if observed_state not in ("", PowerState.ON, PowerState.OFF):
            raise commands.BadArguments(f"unknown observed state {observed_state!r}")
        try:
            recorded = await self.region.outcome(
                operation_id, outcome, observed_state or None, agent or None,
                error_text(error_kind, error) if error or error_kind else None,
                coalesced_into or None, superseded_by or None, self.pserv, epoch=epoch,
                detail=detail)
        except StaleEpoch as e:
            self.log.warn("pserv {p}: {why}", p=self.pserv, why=e)
            raise commands.StaleEpoch(str(e)) from None
        except InvalidInput as e:
            raise commands.BadArguments(str(e)) from None
        return {"recorded": bool(recorded)}

    @commands.ReportOutcomes.responder
    async def report_outcomes(self, reports, epoch):
        """
        A batch of outcomes, recorded in one transaction (issue 14); a
        report that cannot be taken is named in ``refused`` and costs the
        others nothing.
        """
        self._leased(epoch)
        if not isinstance(reports, list):
            raise commands.BadArguments("reports must be a list")
        good, refused = [], []
        for index, report in enumerate(reports):
            try:
                good.append(_outcome_report(report))
            except commands.BadArguments as e:
                refused.append({"operation_id": _op_id_of(report), "code": "BAD_ARGUMENTS",
                                "why": f"reports[{index}]: {e}"[:500]})
        answers = await self.region.outcomes(good, self.pserv, epoch) if good else []
        recorded = 0
        for report, answer in zip(good, answers):
            if isinstance(answer, StaleEpoch):
                self.log.warn("pserv {p}: {why}", p=self.pserv, why=answer)
                refused.append({"operation_id": report["op_id"], "code": "STALE_EPOCH",
                                "why": str(answer)[:500]})
            elif isinstance(answer, Exception):
                refused.append({"operation_id": report["op_id"], "code": "BAD_ARGUMENTS",
                                "why": str(answer)[:500]})
            elif answer:
                recorded += 1
        return {"recorded": recorded, "refused": refused}

    @commands.ReportPowerState.responder
    async def report_power_state(self, states, epoch):
        self._leased(epoch)
        if not isinstance(states, list) or not all(
            isinstance(s, dict) and isinstance(s.get("node"), str)
            and s.get("state") in POWER_STATES for s in states
        ):
            raise commands.BadArguments("states must be [{node, state, error}]")
        # Only the owner's polls count: a former owner's (or a forger's)
        # view of a node is dropped, logged once per node.
        owned = await self.region.leases.owned(epoch, [s["node"] for s in states])
        reports = []
        for s in states:
            if s["node"] not in owned:
                self._warn_unknown(s["node"], "which its epoch {e} does not own (deleted, or"
                                   " handed over)", e=epoch)
                continue
            error = s.get("error") or None
            if error is not None and isinstance(s.get("error_kind"), str):
                error = error_text(s["error_kind"], error)
            reports.append((s["node"], s["state"], error))
        # One bad node never costs the rest of the batch its update.
        _, missing, refused = await self.region.polled(reports)
        for node in missing:
            self._warn_unknown(node, "which does not exist")
        for node, why in refused.items():
            self.log.warn("pserv {p}: report for node {n} refused: {why}",
                          p=self.pserv, n=node, why=why)
        return {}

    def _warn_unknown(self, node, why, **fields):
        """Log a dropped report once per node and connection: pservs poll every few seconds."""
        if node not in self._unknown_nodes:
            self._unknown_nodes.add(node)
            self.log.warn("pserv {p} reported on node {n}, " + why + "; dropped",
                          p=self.pserv, n=node, **fields)

    @commands.ReportLockout.responder
    async def report_lockout(self, node, agent, failures, reason, digest, epoch):
        """Issue 10: keep a BMC lock-out for whichever pserv drives the node next."""
        self._leased(epoch)
        if agent < 0 or failures < 0:
            raise commands.BadArguments("agent and failures must not be negative")
        if node not in await self.region.leases.owned(epoch, [node]):
            raise commands.StaleEpoch(f"epoch {epoch} does not own node {node!r}")
        try:
            power = await self.region.store.nodes.power_config(node)
        except (NotFound, InvalidInput):
            power = None
        if power is None or power_digest(power) != digest:
            self.log.warn("pserv {p}: lock-out of node {n} concerns a configuration the node "
                          "no longer has; dropped", p=self.pserv, n=node)
            return {"recorded": False, "id": 0}
        try:
            lockout_id = await self.region.store.lockouts.record(
                node, agent, failures, reason, self.pserv)
        except InvalidInput as e:
            raise commands.BadArguments(str(e)) from None
        self.log.warn("node {n}: credentials of agent {a} locked out by pserv {p} ({why}); "
                      "not tried again until they change or an operator clears it",
                      n=node, a=agent, p=self.pserv, why=reason)
        return {"recorded": True, "id": lockout_id}

    @commands.Heartbeat.responder
    async def heartbeat(self, actions_in_flight):
        self._leased()
        if not await pservcreds.still_admitted(self.region, self.admission):  # issue 10
            self.log.warn("pserv {p}: its credential was revoked; disconnecting", p=self.pserv)
            raise commands.AuthenticationFailed("this pserv's credential was revoked")
        try:
            remaining = await self.region.leases.renew(self.epoch)
        except LeaseExpired as e:
            self.log.warn("pserv {p}: {why}", p=self.pserv, why=e)
            raise commands.LeaseExpired(str(e)) from None
        try:
            await self.region.store.clusters.heartbeat(self.pserv, actions_in_flight)
        except (InvalidInput, NotFound) as e:
            raise commands.BadArguments(str(e)) from None
        self.in_flight = actions_in_flight  # once the store took it as a count
        return {"lease": remaining}

    @commands.ReleaseNodes.responder
    async def release_nodes(self, nodes):
        self._leased()
        if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
            raise commands.BadArguments("nodes must be a list of names")
        released = await self.region.leases.release_nodes(self.epoch, nodes)
        if released:
            # The next owner may start now.  NOTIFY tells every region, but
            # only while this region's listening connection is up; the
            # pservs connected here hear it directly either way.
            self.region.refresh_cluster(self.cluster)
        return {"released": released}

    @commands.ReleaseLease.responder
    async def release_lease(self):
        self._leased()
        clusters = await self.region.leases.release(self.epoch)
        self.log.info("pserv {p} released its lease (epoch {e})", p=self.pserv, e=self.epoch)
        self.epoch = None
        for cluster in clusters or [self.cluster]:
            await self.region.assign(cluster)
        return {}

    def connectionLost(self, reason):
        self._stop_auth_timer()
        self._authenticated_or_gone()
        if self.pserv is not None:  # first: nothing may use a closed connection
            self.region.directory.remove(self)
        super().connectionLost(reason)
        if self.pserv is not None:
            self.log.info("pserv {name} disconnected", name=self.pserv)
            d = self.region.track(defer.ensureDeferred(self.region.pserv_lost(self)))
            d.addErrback(lambda f: self.log.failure("after losing {p}", f, p=self.pserv))


def _op_id_of(report):
    """A report's operation id for a refusal (0 when it has none that is one)."""
    value = report.get("operation_id") if isinstance(report, dict) else None
    return value if type(value) is int else 0


def _outcome_report(report):
    """
    One report of ``ReportOutcomes`` checked as ``ReportOutcome``'s
    arguments are, as :meth:`Region.outcomes <powerctl.region.core.Region.outcomes>`
    takes it; BadArguments saying what is wrong.
    """
    if not isinstance(report, dict):
        raise commands.BadArguments("must be an object")
    op_id = report.get("operation_id")
    if type(op_id) is not int:
        raise commands.BadArguments("operation_id must be an integer")
    outcome = report.get("outcome")
    if outcome not in TERMINAL_STATES:
        raise commands.BadArguments(f"unknown outcome {outcome!r}")
    observed = report.get("observed_state") or ""
    if observed not in ("", PowerState.ON, PowerState.OFF):
        raise commands.BadArguments(f"unknown observed state {observed!r}")
    texts = {}
    for field in ("agent", "error", "error_kind"):
        value = report.get(field) or ""
        if not isinstance(value, str):
            raise commands.BadArguments(f"{field} must be a string")
        texts[field] = value
    numbers = {}
    for field in ("coalesced_into", "superseded_by"):
        value = report.get(field) or 0
        if type(value) is not int:
            raise commands.BadArguments(f"{field} must be an integer")
        numbers[field] = value or None
    detail = report.get("detail")
    if detail is not None and not isinstance(detail, dict):
        raise commands.BadArguments("detail must be a JSON object")
    error, kind = texts["error"], texts["error_kind"]
    return {"op_id": op_id, "state": outcome, "observed_state": observed or None,
            "agent": texts["agent"] or None,
            "error": error_text(kind, error) if error or kind else None,
            "detail": detail, **numbers}


def _op_json(op):
    return _with_circuit({"id": op["id"], "node": op["node"], "action": op["action"],
                          "power": op["power"]}, op)


def _node_json(node, lockouts=()):
    return _with_circuit({"name": node["node"], "desired_state": node.get("desired_state"),
                          "power": node["power"], "lockouts": list(lockouts)}, node)


def _with_circuit(item, row):
    """``item`` with the node's ``circuit`` when it has one (absent otherwise)."""
    if row.get("circuit"):
        item["circuit"] = row["circuit"]
    return item


def power_digest(power):
    """What ``ReportLockout``'s ``digest`` is: SHA-256 of the canonical JSON."""
    return hashlib.sha256(json.dumps(power, sort_keys=True).encode()).hexdigest()
