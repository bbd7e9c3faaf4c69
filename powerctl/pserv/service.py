"""
The pserv as a twistd service: the registry and drivers, one reconnecting
AMP connection per region, and the poller.

Stopping (SIGTERM) cancels every action -- drivers abort their calls --
and closes the driver types, bounded so that a hung BMC cannot hold the
process.
"""

import uuid

from twisted.application import internet, service
from twisted.internet import defer, endpoints, protocol
from twisted.logger import Logger

from powerctl import config
from powerctl.ownership import LeaseKeeper
from powerctl.pserv.core import Pserv
from powerctl.pserv.circuits import CircuitBudgets
from powerctl.pserv.executor import DriverExecutor, Stagger
from powerctl.pserv.link import PservProtocol, RegionLink
from powerctl.pserv.lockout import LockoutGuard
from powerctl.pserv.poller import Poller
from powerctl.pserv.slots import PrioritySlots
from powerctl.registry import PowerActionRegistry
from powerctl.rpc import commands, transport
from powerctl.rpc.failures import expected

STOP_TIMEOUT = 5.0


class _Factory(protocol.Factory):
    def __init__(self, build):
        self._build = build

    def buildProtocol(self, addr):
        return self._build()


class PservService(service.MultiService):
    log = Logger()

    def __init__(self, settings, secret, reactor, catalogue):
        super().__init__()
        self.settings = settings
        self.reactor = reactor
        self.catalogue = catalogue
        self.link = RegionLink(clock=reactor)
        stagger = Stagger(reactor, settings.stagger_on) if settings.stagger_on else None
        # issue 10: lock-outs are reported to the region, which keeps them
        # for whichever pserv drives the node next.
        lockout = LockoutGuard(reactor, limit=settings.auth_failure_limit,
                               window=settings.auth_failure_window,
                               on_lockout=self.link.report_lockout)
        self.executor = DriverExecutor(catalogue, stagger, PrioritySlots(settings.max_actions),
                                       lockout=lockout, circuits=CircuitBudgets(reactor))
        self.link.digest = self.executor.digest
        self.link.acknowledged = lockout.acknowledged
        self.registry = PowerActionRegistry(self.executor, reactor, cancel_timeout=STOP_TIMEOUT)
        self.pserv = Pserv(self.registry, self.executor, self.link.report)
        self.poller = Poller(self.registry, self.executor, self.link, reactor,
                             settings.poll_interval, settings.poll_concurrency)
        self.instance = uuid.uuid4().hex  # this process: its lease is its own
        if settings.lease_margin <= STOP_TIMEOUT:
            self.log.warn(
                "lease_margin {m}s is not above the {t}s a cancellation may take: a pserv "
                "cut off from every region may still be stopping an action when its lease "
                "ends", m=settings.lease_margin, t=STOP_TIMEOUT)
        self.keeper = LeaseKeeper(reactor, settings.lease_margin, self._lease_ending)
        transport.check_regions(settings)  # issue 10: TLS between hosts
        self.protocols = []
        for description in settings.regions:
            try:
                endpoint = endpoints.clientFromString(reactor, description)
            except ValueError as e:  # not an endpoint description: say which, no traceback
                raise config.ConfigError(f"region {description!r} is not an endpoint "
                                         f"(e.g. tls:host=region:port=5250): {e}") from None
            client = internet.ClientService(
                endpoint, _Factory(lambda: self._protocol(secret)),
                retryPolicy=internet.backoffPolicy(initialDelay=0.5, maxDelay=10.0),
                clock=reactor,
            )
            client.setServiceParent(self)
        # Started after the connections (its first round is then a no-op),
        # stopped before them.
        self.poller.setServiceParent(self)

    def _protocol(self, secret):
        p = PservProtocol(self.pserv, self.link, self.settings, secret, self.reactor,
                          keeper=self.keeper, instance=self.instance,
                          lease_lost=self._lease_ending)
        self.protocols.append(p)
        return p

    def _live_protocols(self):
        self.protocols = [p for p in self.protocols if p.alive]
        return list(self.protocols)

    def _lease_ending(self):
        """
        No renewal came in time: stop driving everything before the lease
        runs out (the region may then give our nodes to another pserv), and
        reconnect to register again.
        """
        if self.pserv.epoch is None:
            return
        self.log.warn("pserv {name}: lease of epoch {epoch} ending without renewal; "
                      "going quiet", name=self.settings.name, epoch=self.pserv.epoch)
        self.keeper.lost()
        self.link.epoch = None
        self.pserv.go_quiet("the pserv's lease is ending")
        for p in self._live_protocols():
            p.transport.loseConnection()

    @classmethod
    def from_config(cls, settings, reactor=None, catalogue=None):
        if reactor is None:
            from twisted.internet import reactor
        if catalogue is None:
            from powerctl.drivers.standard import standard_catalogue

            from powerctl.drivers.bmclimit import BmcLimits

            catalogue = standard_catalogue(reactor,
                                           manual_timeout=settings.manual_timeout or None,
                                           user_agent=f"powerctl-pserv/{settings.name}",
                                           bmc_limits=BmcLimits(settings.bmc_max_sessions,
                                                                settings.bmc_min_interval))
        if settings.credential_file:  # issue 10: admitted to its own cluster only
            from powerctl.rpc.credentials import CredentialError, read_credential_file

            try:
                secret = read_credential_file(settings.credential_file)
            except CredentialError as e:
                raise config.ConfigError(str(e)) from None
        else:
            secret = config.read_secret(settings.secret_file)
        return cls(settings, secret, reactor, catalogue)

    def startService(self):
        super().startService()
        self.log.info("pserv {name} of cluster {cluster} started", name=self.settings.name,
                      cluster=self.settings.cluster)

    def stopService(self):
        # No new poll round from now on; the one under way (if any) ends as
        # going quiet cancels its queries.  MultiService.stopService stops
        # the poller again later, which is harmless.
        if self.poller.running:
            self.poller.stopService()
        self.keeper.close()
        d = defer.ensureDeferred(self._stop())
        d.addTimeout(STOP_TIMEOUT, self.reactor, onTimeoutCancel=self._stop_timed_out)
        d.addErrback(lambda f: self.log.failure("pserv stop", f))
        return d

    def _stop_timed_out(self, result, timeout):
        # Deliberately not an error: a hung BMC must not hold the process,
        # so the stop gives up -- but says so.
        self.log.warn("pserv stop did not finish within {t}s; stopping anyway", t=timeout)

    async def _stop(self):
        """
        Quiet first, then give the lease back so our nodes move at once
        (instead of after the lease's expiry), then close.  A step that
        fails is logged and the next one still runs.
        """
        quiet = self.pserv.go_quiet("pserv shutting down")
        self.pserv.shutdown()
        await quiet
        self.link.send_now()  # outcomes held back by the pace go before the lease
        self.link.close()
        live = [p for p in self._live_protocols() if p.epoch is not None]
        releases = []
        for p in live:
            d = p.callRemote(commands.ReleaseLease)
            d.addTimeout(1.0, self.reactor)
            releases.append(d)
        for p, (ok, result) in zip(live, await defer.DeferredList(releases,
                                                                  consumeErrors=True)):
            if ok:
                continue
            if expected(result, commands.ReleaseLease):
                # Gone, too slow or refused: the lease is not given back, so
                # our nodes move when it expires instead of at once.
                self.log.warn("lease of epoch {epoch} not released: {why}; its nodes move "
                              "when it expires", epoch=p.epoch, why=result.getErrorMessage())
            else:
                self.log.failure("releasing the lease of epoch {epoch} failed", result,
                                 epoch=p.epoch)
        closing = {"stopping the connections": super().stopService,
                   "closing the drivers": self.catalogue.close}
        results = await defer.DeferredList(
            [defer.maybeDeferred(close) for close in closing.values()], consumeErrors=True)
        for what, (ok, result) in zip(closing, results):
            if not ok:
                self.log.failure("pserv stop: {what} failed", result, what=what)
