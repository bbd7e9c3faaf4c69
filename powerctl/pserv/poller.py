"""
Periodic power-state polling of the nodes a pserv knows.

Nodes with a change in play or waiting are skipped (the change will report
its own state).  Polls are ordinary registry queries, so they coalesce with
any query already running for the node, and at most ``concurrency`` run at
once.  Nodes powered by a single outlet of an SNMP PDU are batched instead:
one request per PDU reads every outlet polled on it; that request goes
through the BMC lock-out guard under the PDU's credentials like any
driver call (issue 10), so a refused community or v3 key is not tried
round after round.  The other nodes take the slots one device in turn
(:func:`_round_robin`), not device by device, so slots do not queue on one
BMC's few sessions while other BMCs idle.  Results go to the region in
batches of 200 as they come in, not all at the end of the round: ``concurrency``
workers take the round's reads one after the other, so a round of 10,000
nodes holds a few dozen reads and at most one unsent batch, not a Deferred,
a result and a report row per node until its last read (about 38 MB at
10,000 IPMI nodes, bench/RESULTS.md).

Rounds also refresh from the region (nodes added or changed, dispatches
lost), the safety net under the region's pushes.  When the region gives
a cursor (issue 14), every round's refresh is *incremental*: the open
operations and the nodes changed since the last refresh, a page or two.
A full ``Recover`` paging, which alone sees deleted nodes and nodes moved
to another cluster, then runs every ``FULL_EVERY`` seconds (or less
often, if it takes more than ``REFRESH_SHARE`` of the time).  Without a
cursor (an older region) every refresh is full and spaced out as below.
The refresh runs *beside* the queries, not before them: nothing a query
reads depends on it -- a node the refresh learns is polled from the next
round on, one forgotten meanwhile is dropped from the report -- and the
round ends when both have.  A refresh is costly at scale (at 10,000 nodes
about 7 s, mostly waiting for the region's pages: bench/RESULTS.md), so a
round starts a full one only if the last one started at least
``took / REFRESH_SHARE`` seconds ago (capped at ``REFRESH_AT_LEAST``, so a
region that was slow once does not delay the next one for long):
refreshing takes at most that share of the time.  A small fleet (a refresh of milliseconds) still refreshes
every round; 10,000 nodes polled every 60 s refresh every other round.

Grouping nodes by PDU validates each node's SNMP parameters; that is done
once per node configuration (the executor keeps the same document object
while a node's configuration is unchanged) and kept, not redone each round.

The poller is a ``TimerService``: the pserv's ``MultiService`` starts and
stops it with everything else, and stopping it waits for the round under
way.  A round starts when the service starts too, a no-op then (no region
is connected yet).
"""

import itertools
import json

from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from powerctl.drivers.bmclimit import address_of, address_of_url
from powerctl.power import Action, PowerState
from powerctl.powerdoc import agent_list
from powerctl.pserv.lockout import agent_key
from powerctl.registry import Outcome, PowerAction


#: the largest share of the time full refreshes may take (see the module doc)
REFRESH_SHARE = 0.1
#: ... but one is due at least this often (s), however long the last one took
REFRESH_AT_LEAST = 300.0
#: when the region answers incremental refreshes, a full one is due this often (s)
FULL_EVERY = 600.0

FULL, INCREMENTAL = "full", "incremental"


class Poller(TimerService):
    """
    Polls every ``interval`` seconds of ``clock`` (a reactor, or a
    ``task.Clock`` in tests) while running as a service.
    """

    log = Logger()

    def __init__(self, registry, executor, link, clock, interval, concurrency):
        super().__init__(interval, self._round)
        self.clock = clock  # TimerService's time source
        self.registry = registry
        self.executor = executor
        self.link = link
        self.interval = interval
        self._slots = defer.DeferredSemaphore(concurrency)
        self._concurrency = concurrency
        self._ids = itertools.count(1)
        #: node -> (kept configuration text it was grouped from, PDU key or None,
        #: outlet -- or the device key of a node queried alone)
        self._grouped = {}
        #: PDU key -> (driver type, settings of one of its outlets, guard key)
        self._pdus = {}
        self._refreshed_at = None  # when the last refresh started (clock seconds)
        self._refresh_took = 0.0  # and how long it took

    def _round(self):
        """
        One timed round.  A bug is logged (once, with its traceback) and the
        next round still runs: a failure returned to the TimerService would
        stop polling for good.
        """
        d = defer.maybeDeferred(self.poll_once)
        d.addErrback(lambda f: self.log.failure("poll round failed", f))
        return d

    def poll_once(self):
        """One round: refresh what we know beside querying every idle node and reporting."""
        if not self.link.connected:
            return defer.succeed(None)
        kind = self._refresh_due()
        refresh = self._refresh(kind) if kind else defer.succeed(None)
        poll = defer.maybeDeferred(self._poll)
        return defer.gatherResults([refresh, poll], consumeErrors=True).addErrback(
            lambda f: f.value.subFailure)  # the first failure as it was raised

    def _refresh_due(self):
        """``FULL``, ``INCREMENTAL`` or None: which refresh this round starts."""
        incremental = getattr(self.link, "incremental", False)
        if self._refreshed_at is None:
            if incremental:
                # The connection's hand-shake has just recovered in full:
                # count it as this poller's first full refresh.
                self._refreshed_at, self._refresh_took = self.clock.seconds(), 0.0
                return INCREMENTAL
            return FULL
        if incremental:
            wait = max(self._refresh_took / REFRESH_SHARE, FULL_EVERY)
        else:
            wait = min(self._refresh_took / REFRESH_SHARE, REFRESH_AT_LEAST)
        if self.clock.seconds() - self._refreshed_at >= wait:
            return FULL
        return INCREMENTAL if incremental else None

    def _refresh(self, kind):
        if kind == INCREMENTAL:
            return self.link.refresh(incremental=True)
        started = self._refreshed_at = self.clock.seconds()

        def done(result):
            self._refresh_took = self.clock.seconds() - started
            return result

        return self.link.refresh().addBoth(done)

    def _poll(self):
        epoch = self.link.epoch  # results go out under the lease they were polled under
        if epoch is None:
            return None  # no lease: we drive nothing, not even a query
        # Manual nodes cannot be queried: their state is the last one an
        # operator confirmed, not a failed poll every round.
        nodes = [n for n in self.executor.known_nodes()
                 if not self.registry.busy(n) and self.executor.queryable(n)]
        pdus, singles = self._group(nodes)
        singles = _round_robin(singles, lambda n: self._grouped[n][2])
        # One iterator, taken from by every worker: each read is made once,
        # in this order, at most ``concurrency`` at a time (the slots bound
        # the reads of overlapping rounds together).
        reads = itertools.chain(((self._query_one, (n,)) for n in singles),
                                ((self._query_pdu, pdu) for pdu in pdus.values()))
        reports = _Reports(self, epoch)
        workers = [defer.ensureDeferred(self._work(reads, reports))
                   for _ in range(min(self._concurrency, len(singles) + len(pdus)))]
        d = defer.gatherResults(workers, consumeErrors=True)
        d.addErrback(lambda f: f.value.subFailure)  # a bug: the first one as raised
        return d.addCallback(lambda _: reports.close())

    async def _work(self, reads, reports):
        for read, args in reads:
            reports.add(await self._slots.run(read, *args))

    def _query(self, node):
        action = PowerAction(node=node, action=Action.QUERY, operation_id=f"poll-{next(self._ids)}")
        return self.registry.submit(action)

    def _query_one(self, node):
        """``{node: outcome}``, or ``{node: failure}``: never fails."""
        return self._query(node).addCallbacks(lambda o: {node: o}, lambda f: {node: f})

    def _group(self, nodes):
        """
        ``({pdu key: (driver type, settings, {node: outlet}, guard key)}, [other
        nodes])``: single-outlet SNMP nodes grouped by PDU and credentials
        (and by the lock-out guard's key of those credentials).
        """
        pdus, singles = {}, []
        grouped, known_pdus = {}, {}
        for node in nodes:
            try:
                text = self.executor.config_text(node)
            except KeyError:
                continue  # forgotten since the round began
            entry = self._grouped.get(node)
            if entry is None or entry[0] is not text:
                entry = self._group_one(node, text)
            grouped[node] = entry
            key = entry[1]
            if key is None:
                singles.append(node)
                continue
            pdu = known_pdus[key] = self._pdus[key]
            pdus.setdefault(key, (pdu[0], pdu[1], {}, pdu[2]))[2][node] = entry[2]
        # only what this round used is kept: forgotten nodes and PDUs go
        self._grouped, self._pdus = grouped, known_pdus
        return pdus, singles

    def _group_one(self, node, text):
        """
        ``(text, PDU key, outlet)`` of one node, from its configuration's
        kept text; the PDU key is None if it is queried alone, and the
        outlet is then its device's key instead (:func:`device_key`), to
        spread a round's queries over devices.
        """
        catalogue = self.executor.catalogue
        agents = agent_list(json.loads(text))
        if len(agents) != 1 or agents[0].get("driver") != "snmp":
            return (text, None, device_key(catalogue, agents))
        driver_type = catalogue.get("snmp")
        if not hasattr(driver_type, "query_outlets"):
            return (text, None, device_key(catalogue, agents))
        try:
            settings = catalogue.validate("snmp", agents[0].get("params", {}))
        except Exception:
            # Accepted when configured, so this is a bug; it must not
            # cost the other nodes their poll: this one is queried alone.
            self.log.failure("grouping node {node} by PDU", node=node)
            return (text, None, device_key(catalogue, agents))
        guard_key = agent_key(catalogue, agents[0])
        key = json.dumps([{k: v for k, v in settings.items() if k != "outlet"},
                          guard_key], sort_keys=True, default=str)
        if key not in self._pdus:
            self._pdus[key] = (driver_type, settings, guard_key)
        return (text, key, settings["outlet"])

    def _still_known(self, node):
        return self.executor.knows(node)

    def _query_pdu(self, driver_type, settings, outlets, guard_key):
        guard = getattr(self.executor, "lockout", None)

        def read():
            return driver_type.query_outlets(settings, sorted(set(outlets.values())))

        d = read() if guard is None else guard.attempt(guard_key, read)
        d.addCallback(lambda states: {n: states.get(o) for n, o in outlets.items()})
        d.addErrback(lambda f: dict.fromkeys(outlets, f))
        return d

    def _state(self, node, value):
        """The report row of one read, or None for a node forgotten while it was read."""
        if not self._still_known(node):
            return None  # handed over or deleted meanwhile
        if isinstance(value, Failure):
            return {"node": node, "state": PowerState.ERROR.value,
                    "error": value.getErrorMessage()[:2000],
                    "error_kind": getattr(value.value, "kind", "error")}
        return _answered(node, value)


#: Report rows per ``ReportPowerState``: each AMP value well under 64 KiB.
REPORT_BATCH = 200


class _Reports:
    """One round's report rows, sent in batches of :data:`REPORT_BATCH` as they fill."""

    def __init__(self, poller, epoch):
        self._poller = poller
        self._epoch = epoch
        self._rows = []
        self._sent = []

    def add(self, results):
        for node, value in results.items():
            row = self._poller._state(node, value)
            if row is not None:
                self._rows.append(row)
        while len(self._rows) >= REPORT_BATCH:
            self._send(self._rows[:REPORT_BATCH])
            del self._rows[:REPORT_BATCH]

    def _send(self, rows):
        self._sent.append(self._poller.link.send_states(rows, self._epoch))

    def close(self):
        """Send what is left; fires once every batch of the round is answered."""
        if self._rows:
            self._send(self._rows)
            self._rows = []
        return defer.DeferredList(self._sent)


def device_key(catalogue, agents):
    """
    Which device a node's first agent talks to, as the per-BMC limiter
    (:mod:`powerctl.drivers.bmclimit`) keys it: the ``host:port`` of its
    ``url`` or of its ``host`` (and ``port``); for a driver with neither,
    its account on the device (:func:`~powerctl.pserv.lockout.agent_key`).
    Only an ordering hint: a wrong key costs speed, never correctness.
    """
    if not agents or not isinstance(agents[0], dict):
        return None
    params = agents[0].get("params") or {}
    try:
        if isinstance(params.get("url"), str):
            return address_of_url(params["url"])
        if params.get("host") is not None:
            return address_of(params["host"], params.get("port") or 0)
        return agent_key(catalogue, agents[0])
    except Exception:  # malformed: the node is queried (and fails) anyway
        return None


def _round_robin(nodes, key):
    """
    ``nodes`` reordered so that consecutive ones go to different devices
    (one of each device in turn, devices in order of first appearance).

    Why: a round's queries take the poll slots in this order, and each
    device admits only a few calls at once (iDRAC: 8).  Listed device by
    device (as a pserv learns them), 32 slots would all queue on one
    service's 8 sessions while the other services idle; in turn, every
    slot holds a call that can run.
    """
    by_device = {}
    for node in nodes:
        by_device.setdefault(key(node), []).append(node)
    if len(by_device) <= 1:
        return list(nodes)
    return [n for turn in itertools.zip_longest(*by_device.values()) for n in turn
            if n is not None]


def _answered(node, value):
    """
    The report of a node whose query answered: ``value`` is an
    :class:`~powerctl.registry.Outcome` (queried through the registry) or
    a ``PowerState`` (an outlet read in a PDU batch; None if not reported).

    When only a later level answered because an earlier one did not (level
    1, the BMC, is dead; level 2, the PDU outlet, says on), the state is
    reported *with an error*: the region counts it as a failed poll, so a
    node whose BMC stops answering still turns non-responsive (and may be
    fenced automatically, issue 13), while the state the outlet gave is
    kept once it has.
    """
    detail = {}
    if isinstance(value, Outcome):
        value, detail = value.state, value.detail or {}
    # A level that cannot query by design (a manual agent, a webhook without
    # query_url) fails as "unsupported" every time: not a device gone quiet.
    failed = [f for f in detail.get("failed_levels", ())
              if any(d.get("error_kind") not in (None, "unsupported")
                     for d in f.get("devices", ()))]
    row = {"node": node, "state": value.value if value is not None else PowerState.UNKNOWN.value,
           "error": ""}
    if failed:
        first, level = failed[0], detail.get("level")
        kinds = {d.get("error_kind") for d in first.get("devices", ()) if d.get("error_kind")}
        row["error"] = (f"level {first['level']} did not answer (the state is level"
                        f" {level}'s): {first.get('reason', '')}")[:2000]
        row["error_kind"] = kinds.pop() if len(kinds) == 1 else "error"
    return row
