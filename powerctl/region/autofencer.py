"""
Automatic fencing, the I/O around the decision (:mod:`powerctl.region.autofence`):
every ``interval`` seconds the leader region reads each enabled cluster's
node health, decides, and for each node due:

1. when the policy names a ``soft_url``, first POSTs ``{"node", "cluster",
   "reason"}`` there (say, to restart the host's agent) and gives the host
   ``soft_timeout`` seconds to come back;
2. then, if it is still non-responsive, journals a ``fence`` with requester
   ``auto-fence`` and dispatches it like any request.  A manual request in
   the meantime supersedes it as usual; the decision never fences a node
   with a fence already open.

A storm (too much of a cluster down at once) is logged when it starts and
when it ends; :meth:`AutoFencer.stats` gives per-cluster figures for
``/metrics``.  Only the leader acts (one region fences, not every one).

A ``TimerService``: the region's ``MultiService`` starts and stops it.
"""

import json

import attrs
import treq
from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.logger import Logger

from powerctl.region.autofence import decide
from powerctl.region.coordination import DATABASE_GONE
from powerctl.region.errors import FenceRefused, NotFound
from powerctl.region.store.autofence import REQUESTER


@attrs.define
class ClusterStats:
    """What automatic fencing did in one cluster since this region started."""

    storm: bool = False
    storms: int = 0
    fences: int = 0
    throttled: int = 0
    soft_steps: int = 0


class AutoFencer(TimerService):
    """
    :param store: the region's :class:`~powerctl.region.store.Store`.
    :param clock: a reactor (or ``task.Clock``); its seconds time soft steps.
    :param dispatch: ``dispatch(op)``: send a journalled operation on
        (the region's ``dispatch_later``).
    :param leader: a callable; only while it is true does this region act.
    :param post: ``post(url, body, timeout)`` -> Deferred, the soft step's
        HTTP call (treq by default; tests pass their own).
    """

    log = Logger()

    def __init__(self, store, clock, dispatch, interval=10.0, leader=None, post=None):
        super().__init__(interval, self._round)
        self.clock = clock  # TimerService's time source
        self.store = store
        self.dispatch = dispatch
        self.leader = leader
        self._post = post or self._treq_post
        self._stats = {}
        #: (node, non-responsive since) -> when its soft step was sent
        self._soft = {}
        #: (node, non-responsive since) whose fence was refused, logged once
        self._refused = set()

    def stats(self):
        """``{cluster: ClusterStats}`` (copies) for the metrics."""
        return {c: attrs.evolve(s) for c, s in self._stats.items()}

    async def fence_once(self):
        """One round over every enabled cluster; answers the nodes fenced."""
        if self.leader is not None and not self.leader():
            return []
        fenced = []
        for cluster, policy in await self.store.auto_fence.enabled():
            try:
                fenced += await self._cluster(cluster, policy)
            except DATABASE_GONE:
                raise
            except Exception:
                # One cluster's trouble never stops the others'.
                self.log.failure("automatic fencing of cluster {c} failed", c=cluster)
        return fenced

    async def _cluster(self, cluster, policy):
        now, nodes, started = await self.store.auto_fence.health(cluster, policy.window)
        decision = decide(policy, now, nodes, started)
        stats = self._stats.setdefault(cluster, ClusterStats())
        if decision.storm != stats.storm:
            stats.storm = decision.storm
            if decision.storm:
                stats.storms += 1
                self.log.warn(
                    "cluster {c}: {n} of {total} nodes became non-responsive within {w:g} s:"
                    " more than {share:.0%}, a network or pserv failure rather than hosts;"
                    " automatic fencing held back", c=cluster, n=decision.recent,
                    total=decision.total, w=policy.window, share=policy.storm_share)
            else:
                self.log.info("cluster {c}: the storm is over; automatic fencing resumes",
                              c=cluster)
        if decision.throttled:
            stats.throttled += len(decision.throttled)
            self.log.warn("cluster {c}: {n} node(s) due for automatic fencing held back by the"
                          " limit of {m} per {w:g} s: {nodes}", c=cluster,
                          n=len(decision.throttled), m=policy.max_per_window, w=policy.window,
                          nodes=", ".join(decision.throttled))
        since = {n.name: n.nonresponsive_since for n in nodes}
        fenced = []
        for node in decision.fence:
            outage = (node, since[node])
            if policy.soft_url and not await self._soft_step_done(cluster, node, outage, policy):
                continue
            if await self._fence(node, outage):
                stats.fences += 1
                fenced.append(node)
        # forget outages that ended
        current = {(n.name, n.nonresponsive_since) for n in nodes}
        for key in [k for k in self._soft if k[0] in since and k not in current]:
            del self._soft[key]
        self._refused = {k for k in self._refused if k in current or k[0] not in since}
        return fenced

    async def _soft_step_done(self, cluster, node, outage, policy):
        """
        Whether the soft step for this outage was tried and its time is up
        (fence now); sends it the first time.
        """
        sent = self._soft.get(outage)
        if sent is None:
            self._soft[outage] = self.clock.seconds()
            self._stats[cluster].soft_steps += 1
            try:
                await self._post(policy.soft_url, {"node": node, "cluster": cluster,
                                                   "reason": "non-responsive"},
                                 policy.soft_timeout)
                self.log.info("node {n}: soft step sent to {url}; fenced in {t:g} s unless"
                              " it answers again", n=node, url=policy.soft_url,
                              t=policy.soft_timeout)
            except Exception as e:
                self.log.warn("node {n}: soft step to {url} failed ({why}); fenced in {t:g} s"
                              " unless it answers again", n=node, url=policy.soft_url,
                              why=e, t=policy.soft_timeout)
            return False
        return self.clock.seconds() - sent >= policy.soft_timeout

    async def _fence(self, node, outage):
        try:
            op = await self.store.ops.request(node, "fence", REQUESTER)
        except NotFound:
            return False  # deleted meanwhile
        except FenceRefused as e:
            if outage not in self._refused:
                self._refused.add(outage)
                self.log.error("node {n} is due for automatic fencing, but {why}", n=node,
                               why=e)
            return False
        self.log.warn("node {n}: non-responsive past its grace; automatic fence {op}",
                      n=node, op=op["id"])
        if op["state"] in ("pending", "running"):
            self.dispatch(op)
        return True

    @staticmethod
    def _treq_post(url, body, timeout):
        d = treq.post(url, data=json.dumps(body).encode(),
                      headers={b"Content-Type": [b"application/json"]}, timeout=timeout)
        return d.addCallback(treq.content)

    def _round(self):
        d = defer.ensureDeferred(self.fence_once())
        d.addErrback(self._failed)
        return d

    def _failed(self, failure):
        if failure.check(*DATABASE_GONE):
            self.log.warn("automatic fencing skipped a round: the database is unreachable"
                          " ({why})", why=failure.getErrorMessage())
        else:
            self.log.failure("automatic fencing round failed", failure)
