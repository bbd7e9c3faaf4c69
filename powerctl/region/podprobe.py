"""
Keeps each pod manager's ``status`` (``online``/``offline``) current by
probing it from the region.

An HTTP(S) pod manager (a Redfish service, a chassis manager) is online when
anything answers at its URL -- even 401, which proves a live service; a
refused connection, a DNS failure or no answer within ``timeout`` make it
offline.  Pod managers at other kinds of address (an SNMP PDU is UDP and
often only reachable from its pserv) are left as they are.
"""

from urllib.parse import urlsplit

import treq
from twisted.internet import defer, task
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer


@implementer(IPolicyForHTTPS)
class _AnyCertificate:
    """A probe asks "is anything there", not "is it who it says": BMCs are
    mostly self-signed, and no credentials are sent."""

    def creatorForNetloc(self, hostname, port):
        return CertificateOptions(verify=False)


class PodManagerProber:
    log = Logger()

    def __init__(self, store, reactor, interval=60.0, timeout=5.0, leader=None):
        self.store = store
        #: With several regions only the leader probes (a callable; None: always).
        self.leader = leader
        self.reactor = reactor
        self.timeout = timeout
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        self._agent = Agent(reactor, contextFactory=_AnyCertificate(), pool=self._pool)
        self._loop = task.LoopingCall(self.probe_all)
        self._loop.clock = reactor
        self.interval = interval
        self._current = None  # the probe round under way, if any

    def start(self):
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: self.log.failure("pod manager prober stopped", f))

    def stop(self):
        """Stop probing; fires once the round under way (if any) is over."""
        if self._loop.running:
            self._loop.stop()
        waits = [self._pool.closeCachedConnections()]
        if self._current is not None:
            current = defer.Deferred()
            self._current.addBoth(lambda r: (current.callback(None), r)[1])
            waits.append(current)
        return defer.DeferredList(waits).addCallback(lambda _: None)

    def probe_all(self):
        """One round over every pod manager (the database outlives it: see stop)."""
        d = self._current = defer.ensureDeferred(self._probe_all())

        def done(result):
            if self._current is d:
                self._current = None
            return result

        return d.addBoth(done)

    async def _probe_all(self):
        if self.leader is not None and not self.leader():
            return
        for pm in await self.store.pod_managers.list():
            if urlsplit(pm["url"]).scheme not in ("http", "https"):
                continue
            status = "online" if await self.reachable(pm["url"]) else "offline"
            if status != pm["status"]:
                self.log.info("pod manager {name} is now {status}", name=pm["name"],
                              status=status)
                await self.store.pod_managers.set_status(pm["uuid"], status)

    async def reachable(self, url):
        """Whether an HTTP service answers at ``url`` (any status code)."""
        try:
            response = await treq.request("GET", url, agent=self._agent,
                                          timeout=self.timeout, reactor=self.reactor)
            await treq.content(response)
            return True
        except Exception:
            return False
