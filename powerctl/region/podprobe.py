"""
Keeps each pod manager's ``status`` (``online``/``offline``) current by
probing it from the region.

An HTTP(S) pod manager (a Redfish service, a chassis manager) is online when
anything answers at its URL -- even 401, which proves a live service; a
refused connection, a DNS failure or no answer within ``timeout`` make it
offline.  Pod managers at other kinds of address (an SNMP PDU is UDP and
often only reachable from its pserv) are left as they are.

The prober is a ``TimerService``: the region's ``MultiService`` starts and
stops it, and stopping waits for the round under way (the database must
outlive it).
"""

from urllib.parse import urlsplit

import treq
from twisted.application.internet import TimerService
from twisted.internet import defer, error
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseFailed,
)
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from powerctl.region.coordination import DATABASE_GONE


@implementer(IPolicyForHTTPS)
class _AnyCertificate:
    """A probe asks "is anything there", not "is it who it says": BMCs are
    mostly self-signed, and no credentials are sent."""

    def creatorForNetloc(self, hostname, port):
        return CertificateOptions(verify=False)


class PodManagerProber(TimerService):
    """
    Probes every ``interval`` seconds of ``reactor`` (a ``task.Clock`` in
    tests) while running as a service; :meth:`probe_all` is one round.
    """

    log = Logger()

    def __init__(self, store, reactor, interval=60.0, timeout=5.0, leader=None):
        super().__init__(interval, self._round)
        self.clock = reactor  # TimerService's time source
        self.store = store
        #: With several regions only the leader probes (a callable; None: always).
        self.leader = leader
        self.reactor = reactor
        self.timeout = timeout
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        self._agent = Agent(reactor, contextFactory=_AnyCertificate(), pool=self._pool)
        self.interval = interval

    def stopService(self):
        """Stop probing; fires once the round under way (if any) is over."""
        stopped = super().stopService() if self.running else defer.succeed(None)
        return stopped.addCallback(lambda _: self._pool.closeCachedConnections())

    def _round(self):
        """
        One timed round.  A bug is logged (once, with its traceback) and the
        next round still runs: a failure returned to the TimerService would
        stop probing for good.
        """
        d = self.probe_all()
        d.addErrback(self._round_failed)
        return d

    def _round_failed(self, failure):
        if failure.check(*DATABASE_GONE):
            # PostgreSQL is away (a restart, a failover): the next round
            # will do.
            self.log.warn("pod manager probe round skipped: {why}",
                          why=failure.getErrorMessage())
        else:
            self.log.failure("pod manager probe round failed", failure)

    def probe_all(self):
        """One round over every pod manager."""
        return defer.ensureDeferred(self._probe_all())

    async def _probe_all(self):
        if self.leader is not None and not self.leader():
            return
        for pm in await self.store.pod_managers.list():
            if urlsplit(pm["url"]).scheme not in ("http", "https"):
                continue
            reachable = await self.reachable(pm["url"])
            if reachable is None:
                continue  # we could not tell (logged): its status stays as it was
            status = "online" if reachable else "offline"
            if status != pm["status"]:
                self.log.info("pod manager {name} is now {status}", name=pm["name"],
                              status=status)
                await self.store.pod_managers.set_status(pm["uuid"], status)

    async def reachable(self, url):
        """
        Whether an HTTP service answers at ``url`` (any status code): True,
        False when nothing does (:data:`UNREACHABLE`), or None when the
        probe itself failed unexpectedly -- a bug, logged with its
        traceback, which must not be mistaken for a pod manager gone.
        """
        try:
            response = await treq.request("GET", url, agent=self._agent,
                                          timeout=self.timeout, reactor=self.reactor)
            await treq.content(response)
            return True
        except UNREACHABLE:
            return False
        except Exception:
            self.log.failure("probing pod manager URL {url} failed unexpectedly", url=url)
            return None


#: How "nothing answers there" fails: refused, unresolvable or unroutable
#: (``ConnectError`` and kin), no answer within the timeout (treq cancels
#: the request), or a connection that broke or spoke no HTTP (TLS failures
#: included, which ``ResponseNeverReceived`` wraps).
UNREACHABLE = (
    error.ConnectError,
    error.DNSLookupError,
    error.ConnectingCancelledError,
    error.ConnectionClosed,
    defer.CancelledError,
    ResponseFailed,
    RequestTransmissionFailed,
)
