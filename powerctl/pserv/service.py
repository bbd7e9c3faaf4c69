"""
The pserv as a twistd service: the registry and drivers, one reconnecting
AMP connection per region, and the poller.

Stopping (SIGTERM) cancels every action -- drivers abort their calls --
and closes the driver types, bounded so that a hung BMC cannot hold the
process.
"""

from twisted.application import internet, service
from twisted.internet import defer, endpoints, protocol
from twisted.logger import Logger

from powerctl import config
from powerctl.pserv.core import Pserv
from powerctl.pserv.executor import DriverExecutor, Stagger
from powerctl.pserv.link import PservProtocol, RegionLink
from powerctl.pserv.poller import Poller
from powerctl.pserv.slots import PrioritySlots
from powerctl.registry import PowerActionRegistry

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
        self.link = RegionLink()
        stagger = Stagger(reactor, settings.stagger_on) if settings.stagger_on else None
        self.executor = DriverExecutor(catalogue, stagger, PrioritySlots(settings.max_actions))
        self.registry = PowerActionRegistry(self.executor, reactor, cancel_timeout=STOP_TIMEOUT)
        self.pserv = Pserv(self.registry, self.executor, self.link.report)
        self.poller = Poller(self.registry, self.executor, self.link, reactor,
                             settings.poll_interval, settings.poll_concurrency)
        self.protocols = []
        for description in settings.regions:
            endpoint = endpoints.clientFromString(reactor, description)
            client = internet.ClientService(
                endpoint, _Factory(lambda: self._protocol(secret)),
                retryPolicy=internet.backoffPolicy(initialDelay=0.5, maxDelay=10.0),
                clock=reactor,
            )
            client.setServiceParent(self)

    def _protocol(self, secret):
        p = PservProtocol(self.pserv, self.link, self.settings, secret, self.reactor)
        return p

    @classmethod
    def from_config(cls, settings, reactor=None, catalogue=None):
        if reactor is None:
            from twisted.internet import reactor
        if catalogue is None:
            from powerctl.drivers.standard import standard_catalogue

            catalogue = standard_catalogue(reactor,
                                           manual_timeout=settings.manual_timeout or None)
        return cls(settings, config.read_secret(settings.secret_file), reactor, catalogue)

    def startService(self):
        super().startService()
        self.poller.start()
        self.log.info("pserv {name} of cluster {cluster} started", name=self.settings.name,
                      cluster=self.settings.cluster)

    def stopService(self):
        self.poller.stop()
        self.pserv.shutdown()
        d = defer.DeferredList([
            defer.maybeDeferred(super().stopService),
            defer.maybeDeferred(self.catalogue.close),
        ], consumeErrors=True)
        d.addTimeout(STOP_TIMEOUT, self.reactor, onTimeoutCancel=lambda *a: None)
        d.addBoth(lambda _: None)
        return d
