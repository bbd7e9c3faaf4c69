"""
The region as a twistd service: PostgreSQL (migrated at start-up), the
REST API, and the AMP endpoint pservs connect to.
"""

import os
import sys

import psycopg2
import psycopg2.extensions
from twisted.application import service
from twisted.internet import defer, endpoints, error, protocol
from twisted.logger import Logger
from txpostgres import reconnection, retrying, txpostgres

from powerctl import config
from powerctl.region import http, schema, security, web
from powerctl.region.autofencer import AutoFencer
from powerctl.region.coordination import Coordinator
from powerctl.region.events import EventHub, EventStream
from powerctl.region.core import Region
from powerctl.region.leases import Leases
from powerctl.region.podprobe import PodManagerProber
from powerctl.region.pruning import event_pruner, journal_pruner
from powerctl.region.rpc import RegionProtocol
from powerctl.region.store.connection import KeptReadableConnection
from powerctl.rpc import transport


def _reconnecting_connection(reactor, cooperator=None):
    """
    A pool connection that reconnects by itself once PostgreSQL is back.

    Without a detector a txpostgres connection that PostgreSQL dropped (a
    server restart, a failover) stays closed for good, so after ``pg_ctl
    restart`` every query of the region failed until the region itself was
    restarted (found by tests/test_chaos.py: pservs could not even register
    again).  While a connection is dead its queries fail at once with
    ``ConnectionDead`` (an API 500, an AMP error answer), and it is re-opened
    every 0.2 s .. 2 s until PostgreSQL answers.
    """
    detector = reconnection.DeadConnectionDetector(
        reconnectionIterator=lambda: retrying.simpleBackoffIterator(
            initialDelay=0.2, maxDelay=2.0, factor=2.0, maxRetries=0, now=True),
        reactor=reactor)
    # issue 14: registered as a reader once, not twice per query
    return KeptReadableConnection(reactor, cooperator, detector=detector)


class DatabaseUnreachable(Exception):
    """The region's database cannot be reached at start-up (the message says why)."""


class StartupFailed(Exception):
    """Something the region needs to serve is not there; the message (one line) says what."""


def startup_reason(failure):
    """
    One line saying why the region could not start, for the failures an
    operator causes (a port taken, a key file, a setting, the database gone
    since the check); None for anything else, which is a bug and gets its
    traceback.
    """
    from powerctl.region.vault import VaultError

    value = failure.value
    if isinstance(value, (StartupFailed, config.ConfigError, VaultError)):
        return str(value)
    if isinstance(value, psycopg2.Error):
        return "the database: " + ((str(value).strip().splitlines() or [type(value).__name__])[0])
    return None


def _exit_now(status):
    """Leave the process with ``status``, its output flushed (see RegionService._failed)."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:  # a closed or replaced stream has nothing left to lose
            pass
    os._exit(status)


def describe_dsn(dsn):
    """A libpq connection string as can be shown and logged: without its password."""
    try:
        parts = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.Error:
        return "an unparsable connection string"
    return " ".join(f"{k}={v}" for k, v in parts.items() if k != "password") or "defaults"


def check_database(dsn, timeout=10):
    """
    Connect to the database once, synchronously, before the daemon starts.

    Run by twistd's service maker, before the reactor: a region that cannot
    reach its database at start must exit at once with one line saying
    what it could not reach, not stay up answering every request with an
    error.  (Once running, it rides out database restarts by reconnecting.)
    """
    try:
        psycopg2.connect(dsn, connect_timeout=timeout).close()
    except psycopg2.Error as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DatabaseUnreachable(
            f"cannot reach the database ({describe_dsn(dsn)}): {reason}") from None


class _ReconnectingPool(txpostgres.ConnectionPool):
    connectionFactory = staticmethod(_reconnecting_connection)


class RegionService(service.MultiService):
    """
    Starts in order -- database, migrations, AMP, API, then the periodic
    jobs -- and stops in reverse.  ``api_port``/``rpc_port`` are the
    listening ports once started (useful with port 0).

    The periodic jobs (the silent-pserv reaper, the coordinator's ticks,
    the pod manager probes) are ``TimerService`` children, added once the
    database is there: stopping the region stops them and waits for the
    round each has under way before the database pool closes.
    """

    log = Logger()

    def __init__(self, settings, secret, reactor, catalogue, pool_size=4):
        super().__init__()
        self.settings = settings
        self.secret = secret
        self.reactor = reactor
        self.catalogue = catalogue
        self.pool_size = pool_size
        self.region = None
        self.coordinator = None
        self.prober = None
        self.auto_fencer = None
        self.events = None
        self.stream = None
        self.pruner = None
        self.store = None
        self.guard = None
        self.api_port = None
        self.rpc_port = None
        self._pool = None
        self._ready = None
        self.stop_reactor_on_failure = False
        self.exit = _exit_now  # how a daemon that failed to start leaves (tests replace it)

    @classmethod
    def from_config(cls, settings, reactor=None, catalogue=None):
        if reactor is None:
            from twisted.internet import reactor
        if catalogue is None:
            from powerctl.drivers.standard import standard_catalogue

            catalogue = standard_catalogue(reactor)
        region = cls(settings, config.read_secret(settings.secret_file), reactor, catalogue)
        region.stop_reactor_on_failure = True
        return region

    def startService(self):
        super().startService()
        self._ready = defer.ensureDeferred(self._start())
        self._ready.addErrback(self._failed)
        return self._ready

    def whenReady(self):
        """Fires once the region listens (or re-raises why it could not)."""
        return self._ready

    def _failed(self, failure):
        """
        A region started by twistd that cannot serve must not linger, nor
        look like it stopped on purpose: one line says what failed (with
        the traceback only for a bug), the reactor stops -- so the services
        started so far stop cleanly -- and the process then exits with
        status 1.  twistd itself has no way to end with a failing status
        once its reactor ran (it returns normally and exits 0), hence the
        exit from an "after shutdown" trigger, with the output flushed.  A
        pid file, if twistd wrote one, is left behind; twistd removes a
        stale one at the next start.
        """
        if not self.stop_reactor_on_failure:  # embedded (tests): the caller decides
            self.log.failure("region failed to start", failure)
            return failure
        reason = startup_reason(failure)
        if reason is None:
            self.log.failure("powerctl-region: cannot start: {reason}", failure,
                             reason=f"{type(failure.value).__name__}: {failure.value}")
        else:
            self.log.critical("powerctl-region: cannot start: {reason}", reason=reason)
        self.reactor.addSystemEventTrigger("after", "shutdown", self.exit, 1)
        if self.reactor.running:
            self.reactor.stop()
        else:
            self.reactor.callWhenRunning(self.reactor.stop)
        return None  # logged once, here

    async def _start(self):
        from powerctl.region.api import api_root
        from powerctl.region.store import Store

        security.check_rpc_endpoint(self.settings)  # issue 10: TLS between hosts
        conn = txpostgres.Connection(reactor=self.reactor)
        await conn.connect(self.settings.database)
        try:
            applied = await schema.migrate(conn)
        finally:
            conn.close()
        if applied:
            self.log.info("applied migrations {m}", m=applied)
        vault = await security.open_vault(self.settings, self.catalogue, self.log)  # issue 10
        self._pool = _ReconnectingPool(None, self.settings.database, min=self.pool_size)
        await self._pool.start()
        self.store = Store(self._pool, self.catalogue,
                           responsive_grace=self.settings.responsive_grace,
                           heartbeat_timeout=self.settings.heartbeat_timeout * 3, vault=vault,
                           fence_reuse_seconds=self.settings.fence_reuse_seconds)
        leases = Leases(self._pool, lease=self.settings.lease)
        self.region = Region(self.settings.name, self.store, self.secret, self.reactor,
                             heartbeat_timeout=self.settings.heartbeat_timeout, leases=leases,
                             dispatch_concurrency=self.settings.dispatch_concurrency)
        security.pserv_credentials(self.region, self._pool, vault, self.log)  # issue 10
        self.events = EventHub(self.store, self.reactor)  # issue 14: GET /v1/events
        await self.events.start()
        self.coordinator = Coordinator(
            self.settings.database, self.reactor, self._notified,
            self.region.assignment_round, interval=max(1.0, self.settings.lease / 3))
        factory = protocol.Factory.forProtocol(lambda: RegionProtocol(self.region))
        self.rpc_port = await self._listen(  # issue 10: mutual TLS
            "pservs (AMP)", self.settings.rpc_endpoint, factory,
            make=lambda: transport.server_endpoint(self.reactor, self.settings.rpc_endpoint,
                                                   self.settings.rpc_client_ca))
        from powerctl.region.activity import LiveActivity

        live = LiveActivity(lambda: self.region.directory.all(), self.reactor)
        guard = self.guard = security.api_guard(self._pool, self.reactor)  # issue 10
        stream = self.stream = EventStream(self.events, self.store, self.reactor)
        root = api_root(self.store, self.catalogue, activity=self.region.activity,
                        on_power_request=self.region.dispatch_later, region=self.region,
                        live_activity=live, guard=guard,
                        bulk_share=self.settings.bulk_confirm_share,
                        events=stream)
        web.add_to(root, self.store, activity=self.region.activity, live_activity=live,
                   events=stream,
                   auto_fence=lambda: self.auto_fencer.stats() if self.auto_fencer else {})
        security.protect_web(root, guard, self.settings)  # tokens for the page and /metrics
        # limits on request size and on slow clients: powerctl.region.http
        site = http.Site(root, reactor=self.reactor)
        site.noisy = False
        self.api_port = await self._listen("the REST API", self.settings.api_endpoint, site)
        self.prober = PodManagerProber(self.store, self.reactor,
                                       interval=self.settings.pod_probe_interval,
                                       leader=lambda: self.coordinator.leader)
        jobs = [self.region.reaper, self.coordinator, self.prober]
        self.auto_fencer = AutoFencer(self.store, self.reactor, self.region.dispatch_later,
                                      interval=self.settings.auto_fence_interval,
                                      leader=lambda: self.coordinator.leader)
        jobs.append(self.auto_fencer)
        if self.settings.journal_keep_days:
            jobs.append(journal_pruner(self.store.ops, self.reactor,
                                       self.settings.journal_keep_days,
                                       leader=lambda: self.coordinator.leader))
        # Children of a running MultiService start as they are added.
        self.pruner = event_pruner(self.store.events, self.reactor,
                                   self.settings.event_retention,
                                   leader=lambda: self.coordinator.leader)
        jobs += [self.events, self.pruner]  # issue 14: the live event stream
        for job in jobs:
            job.setServiceParent(self)
        self.log.info("region {name}: API on {api}, pservs on {rpc}", name=self.settings.name,
                      api=self.api_port.getHost(), rpc=self.rpc_port.getHost())
        return self

    def _notified(self, channel, payload):
        """A NOTIFY: events feed the stream, anything else is the region's."""
        if channel == "events":
            return self.events.notified(payload)
        if channel == "tokens":  # issue 14: a revocation empties the token caches
            return security.notified(self.guard, payload)
        return self.region.notified(channel, payload)

    async def _listen(self, what, description, factory, make=None):
        """
        The listening port for ``description`` (its endpoint made by
        ``make()`` when given); StartupFailed naming it if it cannot be had.
        """
        try:
            endpoint = (make() if make is not None
                        else endpoints.serverFromString(self.reactor, description))
            return await endpoint.listen(factory)
        except error.CannotListenError as e:
            why = getattr(e.socketError, "strerror", None) or str(e.socketError)
            raise StartupFailed(f"cannot listen for {what} on {description}: {why}") from None
        except ValueError as e:  # serverFromString: not an endpoint description
            raise StartupFailed(f"cannot listen for {what}: {description!r}: {e}") from None

    async def _stop(self):
        if self._ready is not None and not self._ready.called:
            self._ready.cancel()
        for port in (self.api_port, self.rpc_port):
            if port is not None:
                await port.stopListening()
        # The periodic jobs (in reverse order, as MultiService would), each
        # once its round under way is over; failures are logged here, once.
        jobs = list(self)[::-1]
        stopped = await defer.DeferredList(
            [defer.maybeDeferred(job.stopService) for job in jobs], consumeErrors=True)
        for (ok, result), job in zip(stopped, jobs):
            if not ok:
                self.log.failure("stopping {job} failed", result, job=type(job).__name__)
        if self.region is not None:
            self.region.stop()
            await self.region.drain()
        if self._pool is not None:
            self._pool.close()
        await defer.maybeDeferred(self.catalogue.close)

    def stopService(self):
        # Not running from now on; the children stop in _stop, after the ports.
        service.Service.stopService(self)
        return defer.ensureDeferred(self._stop())
