"""
Ownership figures (issue 9), everything in this process on loopback with a
private PostgreSQL:

(a) **Across regions**: two regions share the database; one pserv is
    connected to region A only; requests are POSTed to region B.  Measures
    the time from the POST's answer (the request committed) to the owning
    pserv's registry having the operation (``Pserv.dispatch`` called), which
    needs B's ``NOTIFY`` to reach A and A to dispatch.  p50/p95/max over
    ``--requests`` requests, one at a time.

(b) **A dead pserv's nodes**: one region, three pservs, ``--nodes`` nodes
    (10,000 by default) with a cheap in-memory driver.  Once every node is
    owned and polled, one pserv's connections are cut without releasing its
    lease (as a network split: no heartbeat, no release).  Measures the time
    from the cut to every one of its nodes being owned by another pserv, and
    to each of them having been polled once by its new owner.

    .venv/bin/python bench/ownership.py [--requests 200] [--nodes 10000]
        [--lease 10] [--lease-margin 3] [--heartbeat 1] [--poll-interval 10]

Prints figures; asserts nothing.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from powerctl import reactor as reactor_choice

SECRET = b"bench-secret-of-enough-length"


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--nodes", type=int, default=10_000)
    p.add_argument("--lease", type=float, default=10.0)
    p.add_argument("--lease-margin", type=float, default=3.0)
    p.add_argument("--heartbeat", type=float, default=1.0)
    p.add_argument("--poll-interval", type=float, default=10.0)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--skip-a", action="store_true")
    p.add_argument("--skip-b", action="store_true")
    return p.parse_args()


def fake_driver_type(tag, hardware, polls):
    """
    A driver type named ``fake`` whose agents change ``hardware[id]`` at
    once and record each query in ``polls[id]`` as ``(time, tag)``.
    """
    import attrs
    from twisted.internet import defer
    from zope.interface import implementer

    from powerctl.drivers.interface import Capabilities, IDriverType, IPowerDriver
    from powerctl.drivers.schema import Param, Schema
    from powerctl.power import PowerState

    schema = Schema("fake", (Param("id", "str", required=True, help="node id"),))

    @implementer(IPowerDriver)
    @attrs.define
    class FakeDriver:
        ident: str

        def _set(self, state):
            hardware[self.ident] = state
            return defer.succeed(state)

        def on(self):
            return self._set(PowerState.ON)

        def off(self):
            return self._set(PowerState.OFF)

        soft_off = off

        def cycle(self):
            return self._set(PowerState.ON)

        def query(self):
            polls.setdefault(self.ident, []).append((time.monotonic(), tag))
            return defer.succeed(hardware.get(self.ident, PowerState.OFF))

    @implementer(IDriverType)
    class FakeType:
        name = "fake"
        capabilities = Capabilities(queryable=True, soft_off=True, native_cycle=True)

        def __init__(self):
            self.schema = schema

        def bind(self, settings):
            return FakeDriver(settings["id"])

        def close(self):
            return defer.succeed(None)

    return FakeType()


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(round(q * len(values))) - 1))]


def ms(seconds):
    return f"{seconds * 1000:.1f} ms"


class Bench:
    def __init__(self, reactor, args):
        self.reactor = reactor
        self.args = args
        self.stops = []
        self.tokens = {}  # database and API URL -> an admin token
        self.hardware = {}
        self.polls = {}

    def sleep(self, seconds):
        from twisted.internet import task

        return task.deferLater(self.reactor, seconds, lambda: None)

    def catalogue(self, tag):
        from powerctl.drivers.catalogue import DriverCatalogue

        return DriverCatalogue([fake_driver_type(tag, self.hardware, self.polls)])

    async def setup(self):
        import psycopg2

        from powerctl.devtools.pgcluster import PostgresCluster

        self.pg = PostgresCluster.create()
        self.stops.append(self.pg.stop)
        conn = psycopg2.connect(self.pg.dsn())
        conn.autocommit = True
        for db in ("bench_a", "bench_b"):
            conn.cursor().execute(f"CREATE DATABASE {db}")
        conn.close()
        fd, self.secret_file = tempfile.mkstemp()
        os.write(fd, SECRET)
        os.close(fd)
        self.stops.append(lambda: os.unlink(self.secret_file))
        from powerctl.region.vault import create_key_file

        create_key_file(self.secret_file + ".key")
        self.stops.append(lambda: os.unlink(self.secret_file + ".key"))
        from twisted.web.client import HTTPConnectionPool

        self.http = HTTPConnectionPool(self.reactor)
        self.http.maxPersistentPerHost = 8

    async def region(self, name, db, lease):
        from powerctl.config import RegionConfig
        from powerctl.region.service import RegionService

        region = RegionService(RegionConfig(
            name=name, database=self.pg.dsn(db), api_endpoint="tcp:0:interface=127.0.0.1",
            rpc_endpoint="tcp:0:interface=127.0.0.1", secret_file=self.secret_file,
            key_file=self.secret_file + ".key",
            lease=lease, heartbeat_timeout=max(5.0, lease)),
            SECRET, self.reactor, self.catalogue(name), pool_size=8)
        region.startService()
        await region.whenReady()
        region.api = f"http://127.0.0.1:{region.api_port.getHost().port}"
        if db not in self.tokens:
            import psycopg2

            from powerctl.region.tokens import create_token_sync

            conn = psycopg2.connect(self.pg.dsn(db))
            self.tokens[db] = create_token_sync(conn, "bench", "admin", created_by="bench")[1]
            conn.close()
        self.tokens[region.api] = self.tokens[db]
        region.rpc = f"tcp:host=127.0.0.1:port={region.rpc_port.getHost().port}"
        self.stops.append(lambda: None)
        return region

    def pserv(self, name, regions, poll_interval, heartbeat, margin):
        from powerctl.config import PservConfig
        from powerctl.pserv.service import PservService

        pserv = PservService(PservConfig(
            name=name, cluster="c", secret_file=self.secret_file,
            poll_interval=poll_interval, heartbeat_interval=heartbeat, lease_margin=margin,
            poll_concurrency=256, regions=tuple(r.rpc for r in regions)),
            SECRET, self.reactor, self.catalogue(name))
        pserv.startService()
        return pserv

    async def call(self, api, method, path, body=None):
        import treq

        token = self.tokens[api]
        r = await treq.request(method, api + path, pool=self.http,
                               data=json.dumps(body).encode() if body is not None else None,
                               headers={b"Content-Type": [b"application/json"],
                                        b"Authorization": [f"Bearer {token}".encode()]})
        return r.code, json.loads(await treq.content(r) or b"null")

    async def connected(self, region, count):
        while True:
            _, clusters = await self.call(region.api, "GET", "/v1/clusters")
            up = [p for c in clusters for p in c.get("pservs", []) if p.get("connected")]
            if len(up) >= count:
                return
            await self.sleep(0.05)

    # -- (a) ----------------------------------------------------------------

    async def across_regions(self):
        from twisted.internet import defer

        args = self.args
        a = await self.region("region-a", "bench_a", 30.0)
        b = await self.region("region-b", "bench_a", 30.0)
        pserv = self.pserv("pserv-a", [a], 3600, 5.0, 10.0)
        await self.connected(a, 1)
        seen, waiters = {}, {}
        real_dispatch = pserv.pserv.dispatch

        def dispatch(operation_id, *rest, **kw):
            op = int(operation_id)
            if op not in seen:
                seen[op] = time.perf_counter()
                if op in waiters:
                    waiters.pop(op).callback(None)
            return real_dispatch(operation_id, *rest, **kw)

        pserv.pserv.dispatch = dispatch
        for i in range(args.requests):
            code, body = await self.call(a.api, "POST", "/v1/nodes", {
                "name": f"x{i}", "cluster": "c",
                "power": {"mode": "single", "agents": [{"driver": "fake",
                                                        "params": {"id": f"x{i}"}}]}})
            assert code == 201, body
        await self.sleep(1.0)   # assignment done, recovery settled
        after_answer, after_send = [], []
        for i in range(args.requests):
            sent = time.perf_counter()
            code, op = await self.call(b.api, "POST", f"/v1/nodes/x{i}/power",
                                       {"action": "on" if i % 2 else "off"})
            answered = time.perf_counter()
            assert code == 202, op
            if op["id"] not in seen:
                d = waiters[op["id"]] = defer.Deferred()
                d.addTimeout(10, self.reactor)
                try:
                    await d
                except defer.TimeoutError:
                    print(f"  operation {op['id']} never reached the pserv", file=sys.stderr)
                    continue
            after_answer.append(seen[op["id"]] - answered)
            after_send.append(seen[op["id"]] - sent)
            await self.sleep(0.01)
        print(f"(a) request to region B, owner connected to region A only; "
              f"{len(after_answer)} requests, one at a time")
        for label, values in (("POST answered -> owner's registry has it", after_answer),
                              ("POST sent     -> owner's registry has it", after_send)):
            print(f"    {label}: p50 {ms(statistics.median(values))}, "
                  f"p95 {ms(percentile(values, 0.95))}, max {ms(max(values))}, "
                  f"min {ms(min(values))}")
        await pserv.stopService()
        await b.stopService()
        await a.stopService()

    # -- (b) ----------------------------------------------------------------

    async def failover(self):
        import psycopg2
        from psycopg2.extras import Json

        args = self.args
        region = await self.region("region", "bench_b", args.lease)
        names = ("pserv-1", "pserv-2", "pserv-3")
        pservs = {n: self.pserv(n, [region], args.poll_interval, args.heartbeat,
                                args.lease_margin) for n in names}
        await self.connected(region, 3)
        rounds = {n: [] for n in names}   # (start, end) of each poll round, per pserv
        for n, p in pservs.items():
            def timed(real=p.poller.poll_once, log=rounds[n]):
                start = time.monotonic()
                d = real()
                d.addBoth(lambda r: (log.append((start, time.monotonic())), r)[1])
                return d
            p.poller.poll_once = timed
            p.poller._loop.f = timed
        # One node through the API (its stored form), the rest by SQL: 10,000
        # API calls would only measure the API.
        code, body = await self.call(region.api, "POST", "/v1/nodes", {
            "name": "n0", "cluster": "c",
            "power": {"mode": "single", "agents": [{"driver": "fake", "params": {"id": "n0"}}]}})
        assert code == 201, body
        conn = psycopg2.connect(self.pg.dsn("bench_b"))
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute("SELECT power FROM nodes WHERE name = 'n0'")
        template = json.dumps(cur.fetchone()[0])
        rows = [(f"n{i}", Json(json.loads(template.replace('"n0"', f'"n{i}"'))))
                for i in range(1, args.nodes)]
        t = time.perf_counter()
        psycopg2.extras.execute_values(
            cur, "INSERT INTO nodes (name, cluster, power) VALUES %s",
            [(n, "c", p) for n, p in rows], page_size=1000)
        print(f"(b) {args.nodes} nodes inserted in {time.perf_counter() - t:.1f} s; lease "
              f"{args.lease} s, lease_margin {args.lease_margin} s, heartbeat "
              f"{args.heartbeat} s, poll_interval {args.poll_interval} s")

        def owners():
            cur.execute("SELECT n.name, l.pserv, n.owner_epoch FROM nodes n"
                        " LEFT JOIN leases l ON l.epoch = n.owner_epoch")
            return {name: (pserv, epoch) for name, pserv, epoch in cur.fetchall()}

        deadline = time.monotonic() + args.timeout
        t = time.monotonic()
        while True:
            current = owners()
            if all(p is not None for p, _ in current.values()) and all(
                    any(tag == p for _, tag in self.polls.get(n, ())) for n, (p, _) in
                    current.items()):
                break
            if time.monotonic() > deadline:
                print("    timed out waiting for the initial assignment and polls")
                return
            await self.sleep(0.2)
        spread = {n: sum(1 for p, _ in current.values() if p == n) for n in names}
        print(f"    initial: every node owned and polled after {time.monotonic() - t:.1f} s; "
              f"spread {spread}")

        victim = names[0]
        theirs = {n for n, (p, _) in current.items() if p == victim}
        cut = time.monotonic()
        # A network split: no heartbeat, no release.  The victim goes quiet
        # on its own when its lease runs out (its poller stopped at once, so
        # its queries cannot be mistaken for the new owners').
        doomed = pservs[victim]
        doomed.poller.stopService()
        for child in list(doomed):
            await child.stopService()
        owned_at = None
        polled = {}
        while time.monotonic() < deadline:
            current = owners() if owned_at is None else current
            if owned_at is None and all(current[n][0] not in (None, victim) for n in theirs):
                owned_at = time.monotonic()
            for n in theirs - polled.keys():
                for when, tag in self.polls.get(n, ()):
                    if when > cut and tag != victim:
                        polled[n] = when
                        break
            if owned_at is not None and len(polled) == len(theirs):
                break
            await self.sleep(0.1)
        if owned_at is None or len(polled) < len(theirs):
            print(f"    timed out: owned {owned_at is not None}, polled {len(polled)}"
                  f"/{len(theirs)}")
            return
        firsts = [w - cut for w in polled.values()]
        moved = {n: sum(1 for x in theirs if current[x][0] == n) for n in names[1:]}
        print(f"    cut {victim} ({len(theirs)} nodes) without release:")
        print(f"    all its nodes owned by others after {owned_at - cut:.2f} s ({moved})")
        print(f"    each polled once by its new owner: all after {max(firsts):.2f} s "
              f"(p50 {statistics.median(firsts):.2f} s, first {min(firsts):.2f} s)")
        for name in names[1:]:
            spans = [(round(a - cut, 1), round(b - a, 1)) for a, b in rounds[name]
                     if b > cut - args.poll_interval]
            print(f"    {name}'s poll rounds around it (start after the cut, seconds taken):"
                  f" {spans[:6]}")
        for name in names[1:]:
            await pservs[name].stopService()
        await doomed.stopService()
        await region.stopService()
        conn.close()

    async def run(self):
        try:
            await self.setup()
            if not self.args.skip_a:
                await self.across_regions()
            if not self.args.skip_b:
                await self.failover()
            await self.http.closeCachedConnections()
        finally:
            for stop in reversed(self.stops):
                stop()


def main():
    args = parse()
    reactor = reactor_choice.install()
    from twisted.internet import defer

    def go():
        d = defer.ensureDeferred(Bench(reactor, args).run())
        d.addErrback(lambda f: f.printTraceback())
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()


if __name__ == "__main__":
    main()
