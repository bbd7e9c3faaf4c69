"""
``powerctl demo``: a whole powerctl on one machine, for a first look.

Starts a private PostgreSQL cluster in a state directory, a region, a
pserv, and simulated hardware -- IPMI BMCs, an SNMP PDU and a Redfish
service -- on loopback; registers a small fleet through the REST API
(single, concurrent dual-PSU and sequential fallback nodes); sends power
requests including a superseding and a coalescing pair; and prints the
fleet converging until every operation has finished.  Everything it
starts is stopped when it ends.
"""

import argparse
import json
import os
import sys
import time

from powerctl import reactor as reactor_choice
from powerctl.power import TERMINAL_STATES

SECRET = b"powerctl-demo-secret-not-for-production"


HELP = """\
A whole powerctl on this machine, for a first look.

Starts a private PostgreSQL cluster in the state directory, a region, a
pserv and simulated hardware (IPMI BMCs, an SNMP PDU and a Redfish service)
on 127.0.0.1; registers a small fleet through the REST API (single,
dual-PSU and fallback nodes); sends power requests, including a pair that
supersedes and a pair that coalesces; and prints the fleet converging until
every operation has finished.  Everything it starts is stopped when it
ends.

With --serve it keeps running after that, so the CLI, the REST API and the
status page can be tried against it, until Ctrl-C (or SIGTERM); it then
stops everything it started within a few seconds.
"""

#: Seconds the clean-up after Ctrl-C / SIGTERM may take before the demo
#: gives up on it and exits anyway.
STOP_TIMEOUT = 4.0


def parse(argv):
    p = argparse.ArgumentParser(prog="powerctl demo", description=HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state-dir", default=os.path.join(os.getcwd(), "state", "demo"),
                   help="where the demo's PostgreSQL cluster lives (kept between runs)")
    p.add_argument("--timeout", type=float, default=90.0,
                   help="give up if the fleet has not converged after this many seconds")
    p.add_argument("--serve", action="store_true",
                   help="keep running after converging (Ctrl-C stops), to try the CLI/API")
    return p.parse_args(argv)


def main(argv=None):
    options = parse(sys.argv[1:] if argv is None else argv)
    reactor = reactor_choice.install()
    demo = Demo(reactor, options)
    reactor.callWhenRunning(demo.start)
    # Ctrl-C and SIGTERM stop the reactor; this trigger runs the clean-ups
    # first (the reactor waits for the Deferred it returns).
    reactor.addSystemEventTrigger("before", "shutdown", demo.shutdown)
    reactor.run()
    return demo.code


def private_directory(path):
    """
    ``path`` made absolute, created if missing and mode 0700 whatever it was:
    the demo's state directory holds its RPC secret, encryption key and
    admin token (issue 10).
    """
    path = os.path.abspath(path)
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _private(path, flags):
    """An ``open`` opener creating the file mode 0600 (it holds a secret)."""
    return os.open(path, flags, 0o600)


def _demo_token(dsn, state):
    """A fresh admin token for the demo, also written to ``state``/token (0600)."""
    import psycopg2

    from powerctl.region.tokens import create_token_sync

    conn = psycopg2.connect(dsn)
    try:
        _, token = create_token_sync(conn, "demo-admin", "admin", created_by="powerctl demo")
    finally:
        conn.close()
    path = os.path.join(state, "token")
    with open(path, "w", opener=_private) as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    return token


class Demo:
    """
    The demo's run.  ``running`` holds the Deferred of :meth:`run` for as
    long as it runs: with ``--serve`` the coroutine waits on a Deferred
    nothing else refers to, and without this reference the garbage
    collector could reclaim both and run the clean-ups in the middle of
    serving.
    """

    def __init__(self, reactor, options):
        self.reactor = reactor
        self.options = options
        self.cleanups = []
        self.code = 1
        self.running = None
        self.serving = None
        self.stopping = False

    def start(self):
        from twisted.internet import defer

        self.running = defer.ensureDeferred(self.run())
        self.running.addBoth(self._done)

    def _done(self, outcome):
        from twisted.internet import defer

        if isinstance(outcome, int):
            self.code = outcome
        elif outcome.check(defer.CancelledError) and self.stopping:
            print("stopped before the demo finished", file=sys.stderr)
            self.code = 130
        else:
            print(f"demo failed: {outcome.getErrorMessage()}", file=sys.stderr)
            outcome.printTraceback(file=sys.stderr)
            self.code = 1
        self.running = None
        if not self.stopping:
            self.stopping = True
            self.reactor.stop()

    def shutdown(self):
        """
        The reactor is stopping (Ctrl-C, SIGTERM, or the demo is done):
        end serving, or cancel whatever step is under way, and give the
        clean-ups at most :data:`STOP_TIMEOUT` seconds.
        """
        from twisted.internet import defer

        self.stopping = True
        running = self.running
        if running is None:
            return None
        print("\nstopping: shutting down the pserv, the region, the simulators and "
              "PostgreSQL", file=sys.stderr, flush=True)
        finished = defer.Deferred()
        running.addBoth(lambda result: finished.callback(None) or result)
        if self.serving is not None and not self.serving.called:
            self.serving.callback(None)
        else:
            running.cancel()
        return finished.addTimeout(STOP_TIMEOUT, self.reactor).addErrback(
            lambda f: print(f"(clean-up did not finish: {f.getErrorMessage()})",
                            file=sys.stderr))

    async def run(self):
        try:
            return await self._run()
        finally:
            for cleanup in reversed(self.cleanups):
                try:
                    await cleanup()
                except Exception as e:  # keep tearing down the rest
                    print(f"(cleanup: {e})", file=sys.stderr)

    def step(self, text):
        print(f"==> {text}", flush=True)

    async def _run(self):
        from twisted.internet import defer

        from powerctl.devtools.pgcluster import PostgresCluster, PostgresUnavailable

        t0 = time.monotonic()
        state = private_directory(self.options.state_dir)
        try:
            pg = PostgresCluster.create(os.path.join(state, "pg"), keep=True)
            self.step(f"PostgreSQL: private cluster in {state}/pg")
        except PostgresUnavailable as e:
            if "cannot reach" not in str(e):
                raise
            # As root, postgres runs as the 'postgres' user, who cannot
            # enter the state directory (0700: it holds the demo's secrets)
            # or may not reach a home directory: a throwaway one instead.
            pg = PostgresCluster.create()
            self.step(f"PostgreSQL: {state} is not reachable by the postgres user (it is "
                      f"private, mode 0700); throwaway cluster in {pg.directory}")
        self.cleanups.append(lambda: defer.succeed(pg.stop()))
        dsn = self._fresh_database(pg)

        await self._start_hardware()
        await self._start_region(dsn, state)
        await self._start_pserv(state)
        await self._register_fleet()
        ops = await self._power_requests()
        code = await self._watch(ops)
        self.step(f"done in {time.monotonic() - t0:.1f}s")
        if self.options.serve:
            self.step(f"serving: try  POWERCTL_TOKEN_FILE={self.options.state_dir}/token "
                      f"powerctl --api {self.api} node list   or open {self.api}/ in a "
                      f"browser (log in with the token)   (Ctrl-C stops)")
            self.serving = defer.Deferred()
            await self.serving  # until Ctrl-C or SIGTERM (see shutdown)
            self.step("stopped serving")
        return code

    @staticmethod
    def _fresh_database(pg):
        import psycopg2

        conn = psycopg2.connect(pg.dsn())
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("DROP DATABASE IF EXISTS powerctl_demo WITH (FORCE)")
            cur.execute("CREATE DATABASE powerctl_demo")
        conn.close()
        return pg.dsn("powerctl_demo")

    async def _start_hardware(self):
        from twisted.internet import defer

        from powerctl.sim import ipmi, redfish, snmp

        self.ipmi = ipmi.start(self.reactor, {"count": 3, "switch_delay": 0.3, "latency": 0.002,
                                              "username": "admin", "password": "ipmi-pass"})
        self.cleanups.append(self.ipmi.stop)
        self.pdu = await defer.maybeDeferred(snmp.start, self.reactor, snmp.SimOptions(
            family="apc-rpdu", outlets=8, switch_delay=0.2))
        self.cleanups.append(lambda: defer.maybeDeferred(self.pdu.stop))
        self.redfish = redfish.RedfishSimulator(
            self.reactor, [redfish.SimSystem(id=f"rf{i}", name=f"rf{i}") for i in range(1, 4)],
            username="root", password="redfish-pass", delay=1.0).start()
        self.cleanups.append(lambda: defer.maybeDeferred(self.redfish.stop))
        self.step(f"hardware: {len(self.ipmi.ports)} IPMI BMCs (udp {self.ipmi.ports}), "
                  f"an APC PDU with 8 outlets (udp {self.pdu.port}), "
                  f"a Redfish service with 3 systems ({self.redfish.url})")

    async def _start_region(self, dsn, state):
        from powerctl.config import RegionConfig
        from powerctl.drivers.standard import standard_catalogue
        from powerctl.region.service import RegionService

        secret_file = os.path.join(state, "secret")
        with open(secret_file, "wb", opener=_private) as f:
            f.write(SECRET)
        os.chmod(secret_file, 0o600)
        self.secret_file = secret_file
        key_file = os.path.join(state, "secrets.key")
        if not os.path.exists(key_file):  # a fresh demo database: a fresh key
            from powerctl.region.vault import create_key_file

            create_key_file(key_file)
        settings = RegionConfig(name="demo-region", database=dsn,
                                api_endpoint="tcp:0:interface=127.0.0.1",
                                rpc_endpoint="tcp:0:interface=127.0.0.1",
                                secret_file=secret_file, key_file=key_file)
        self.region = RegionService(settings, SECRET, self.reactor,
                                    standard_catalogue(self.reactor))
        self.region.startService()
        await self.region.whenReady()
        self.cleanups.append(self.region.stopService)
        self.api = f"http://127.0.0.1:{self.region.api_port.getHost().port}"
        self.rpc = self.region.rpc_port.getHost().port
        self.step(f"region: REST API {self.api}/v1, AMP on 127.0.0.1:{self.rpc}")
        self.token = _demo_token(dsn, state)  # issue 10: the demo's admin token
        self.step(f"admin API token (also in {state}/token, mode 0600): {self.token}")

    async def _start_pserv(self, state):
        from powerctl.config import PservConfig
        from powerctl.drivers.interface import Timing
        from powerctl.drivers.standard import standard_catalogue
        from powerctl.pserv.service import PservService

        settings = PservConfig(name="demo-pserv", cluster="rack1",
                               regions=(f"tcp:host=127.0.0.1:port={self.rpc}",),
                               secret_file=self.secret_file, poll_interval=5.0,
                               heartbeat_interval=2.0)
        timing = Timing(timeout=3.0, retries=1, backoff=0.2, verify_timeout=20.0,
                        poll_interval=0.2, soft_off_timeout=5.0)
        self.pserv = PservService(settings, SECRET, self.reactor,
                                  standard_catalogue(self.reactor, timing=timing))
        self.pserv.startService()
        self.cleanups.append(self.pserv.stopService)
        await self._until(self._pserv_connected, 15)
        self.step("pserv: demo-pserv of cluster rack1 connected and authenticated")

    async def _pserv_connected(self):
        clusters = await self.api_call("GET", "/v1/clusters")
        return any(p.get("connected") for c in clusters for p in c.get("pservs", []))

    def _fleet(self):
        ipmi = lambda port: {"driver": "ipmi", "params": {  # noqa: E731
            "host": "127.0.0.1", "port": port, "username": "admin", "password": "ipmi-pass"}}
        outlet = lambda n: {"driver": "snmp", "params": {  # noqa: E731
            "host": "127.0.0.1", "port": self.pdu.port, "family": "apc-rpdu", "outlet": n,
            "community": "public", "write_community": "private"}}
        redfish = lambda system: {"driver": "redfish", "params": {  # noqa: E731
            "url": self.redfish.url, "username": "root", "password": "redfish-pass",
            "system": system}}
        p = self.ipmi.ports
        return {
            "ipmi-1": {"mode": "single", "agents": [ipmi(p[0])]},
            "ipmi-2": {"mode": "single", "agents": [ipmi(p[1])]},
            "pdu-3": {"mode": "single", "agents": [outlet(3)]},
            "dual-psu": {"mode": "concurrent", "agents": [outlet(1), outlet(2)]},
            "fallback": {"mode": "sequential", "agents": [redfish("no-such-system"), ipmi(p[2])]},
            "rf-1": {"mode": "single", "agents": [redfish("rf1")]},
            "rf-2": {"mode": "single", "agents": [redfish("rf2")]},
        }

    async def _register_fleet(self):
        fleet = self._fleet()
        for name, power in fleet.items():
            await self.api_call("POST", "/v1/nodes", {"name": name, "cluster": "rack1",
                                                      "power": power})
        self.step(f"registered {len(fleet)} nodes: " + ", ".join(
            f"{n} ({p['mode']}: {'+'.join(a['driver'] for a in p['agents'])})"
            for n, p in fleet.items()))

    async def _power_requests(self):
        ops = []
        for name in self._fleet():
            ops.append(await self.api_call("POST", f"/v1/nodes/{name}/power", {"action": "on"}))
        self.step(f"requested power on for every node ({len(ops)} operations)")
        ops.append(await self.api_call("POST", "/v1/nodes/rf-2/power", {"action": "off"}))
        self.step("rf-2: off requested while its slow 'on' runs: off outranks on (supersede)")
        ops.append(await self.api_call("POST", "/v1/nodes/rf-1/power", {"action": "on"}))
        self.step("rf-1: a second 'on' while the first runs: it joins it (coalesce)")
        return ops

    async def _watch(self, ops):
        deadline = time.monotonic() + self.options.timeout
        while True:
            nodes = await self.api_call("GET", "/v1/nodes")
            current = [await self.api_call("GET", f"/v1/power_ops/{o['id']}") for o in ops]
            self._print_fleet(nodes)
            if all(o["state"] in TERMINAL_STATES for o in current) and all(
                    n["power_state"] == n["desired_state"] for n in nodes):
                break
            if time.monotonic() > deadline:
                self.step("gave up waiting: the fleet did not converge in time")
                self._print_ops(current)
                return 1
            await self._sleep(1.0)
        self._print_ops(current)
        self.step("converged: every node is in its desired state, no operation is open")
        return 0

    def _print_fleet(self, nodes):
        row = "  ".join(f"{n['name']}={n['power_state']}/{n['desired_state']}" for n in nodes)
        print(f"    fleet (current/desired): {row}", flush=True)

    def _print_ops(self, ops):
        print("    operations:")
        for o in ops:
            extra = ""
            if o.get("coalesced_into"):
                extra = f" (coalesced into {o['coalesced_into']})"
            if o.get("superseded_by"):
                extra = f" (superseded by {o['superseded_by']})"
            if o.get("error"):
                extra += f" error: {o['error']}"
            print(f"      #{o['id']:<3} {o['node']:<9} {o['action']:<8} {o['state']:<10}"
                  f" agent={o.get('agent') or '-'}{extra}")

    async def api_call(self, method, path, body=None):
        import treq

        kwargs = {"headers": {b"Authorization": [f"Bearer {self.token}".encode()]}}
        if body is not None:
            kwargs["data"] = json.dumps(body).encode()
            kwargs["headers"][b"Content-Type"] = [b"application/json"]
        response = await treq.request(method, self.api + path, **kwargs)
        payload = json.loads(await treq.content(response) or b"null")
        if response.code >= 400:
            raise RuntimeError(f"{method} {path}: {response.code} {payload}")
        return payload

    async def _sleep(self, seconds):
        from twisted.internet import task

        await task.deferLater(self.reactor, seconds, lambda: None)

    async def _until(self, predicate, timeout):
        deadline = time.monotonic() + timeout
        while not await predicate():
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready within {timeout}s")
            await self._sleep(0.1)
