"""
End-to-end throughput: a private PostgreSQL, a region, a pserv and a
simulated Redfish service with N systems, all on loopback in this process.
Registers N nodes, requests power on for all of them through the REST API,
and measures request latency and the time until every operation finished.

    .venv/bin/python bench/fleet.py [--nodes 200] [--switch-delay 0.5]

Prints figures; asserts nothing.  Bounded by --timeout.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from powerctl import reactor as reactor_choice


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, default=200)
    p.add_argument("--switch-delay", type=float, default=0.5)
    p.add_argument("--timeout", type=float, default=300)
    return p.parse_args()


async def bench(reactor, args):
    import psycopg2
    import treq
    from twisted.internet import task
    from twisted.web.client import HTTPConnectionPool

    from powerctl.config import PservConfig, RegionConfig
    from powerctl.drivers.interface import Timing
    from powerctl.drivers.standard import standard_catalogue
    from powerctl.devtools.pgcluster import PostgresCluster
    from powerctl.pserv.service import PservService
    from powerctl.region.service import RegionService
    from powerctl.sim.redfish import RedfishSimulator, SimSystem

    pg = PostgresCluster.create()
    stops = [lambda: pg.stop()]
    try:
        conn = psycopg2.connect(pg.dsn())
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE bench")
        conn.close()
        secret = b"bench-secret-of-enough-length"
        fd, secret_file = tempfile.mkstemp()
        os.write(fd, secret)
        os.close(fd)
        stops.append(lambda: os.unlink(secret_file))
        from powerctl.region.vault import create_key_file

        create_key_file(secret_file + ".key")
        stops.append(lambda: os.unlink(secret_file + ".key"))
        sim = RedfishSimulator(reactor, [SimSystem(id=f"s{i}", name=f"s{i}")
                                         for i in range(args.nodes)],
                               username="u", password="p", delay=args.switch_delay).start()
        region = RegionService(RegionConfig(
            name="bench", database=pg.dsn("bench"), api_endpoint="tcp:0:interface=127.0.0.1",
            rpc_endpoint="tcp:0:interface=127.0.0.1", secret_file=secret_file,
            key_file=secret_file + ".key"),
            secret, reactor, standard_catalogue(reactor), pool_size=8)
        region.startService()
        await region.whenReady()
        api = f"http://127.0.0.1:{region.api_port.getHost().port}"
        from powerctl.region.tokens import create_token_sync

        conn = psycopg2.connect(pg.dsn("bench"))
        token = create_token_sync(conn, "bench", "admin", created_by="bench")[1]
        conn.close()
        timing = Timing(timeout=10, retries=1, verify_timeout=60, poll_interval=0.25)
        pserv = PservService(PservConfig(
            name="bench-pserv", cluster="c", secret_file=secret_file, poll_interval=3600,
            regions=(f"tcp:host=127.0.0.1:port={region.rpc_port.getHost().port}",)),
            secret, reactor, standard_catalogue(reactor, timing=timing))
        pserv.startService()
        http = HTTPConnectionPool(reactor)
        http.maxPersistentPerHost = 16

        async def call(method, path, body=None):
            r = await treq.request(method, api + path, pool=http,
                                   data=json.dumps(body).encode() if body else None,
                                   headers={b"Content-Type": [b"application/json"],
                                            b"Authorization": [f"Bearer {token}".encode()]})
            return r.code, json.loads(await treq.content(r) or b"null")

        while not any(p.get("connected") for c in (await call("GET", "/v1/clusters"))[1]
                      for p in c["pservs"]):
            await task.deferLater(reactor, 0.05, lambda: None)

        t = time.perf_counter()
        for i in range(args.nodes):
            await call("POST", "/v1/nodes", {"name": f"n{i}", "cluster": "c", "power": {
                "mode": "single", "agents": [{"driver": "redfish", "params": {
                    "url": sim.url, "username": "u", "password": "p", "system": f"s{i}"}}]}})
        register = time.perf_counter() - t

        latencies = []
        t0 = time.perf_counter()
        ops = []
        for i in range(args.nodes):
            t = time.perf_counter()
            code, op = await call("POST", f"/v1/nodes/n{i}/power", {"action": "on"})
            latencies.append(time.perf_counter() - t)
            ops.append(op["id"])
        requested = time.perf_counter() - t0
        deadline = time.monotonic() + args.timeout
        while True:
            code, open_ops = await call("GET", "/v1/power_ops?state=running&limit=1")
            code, pending = await call("GET", "/v1/power_ops?state=pending&limit=1")
            if not open_ops and not pending:
                break
            if time.monotonic() > deadline:
                print("timed out waiting for the operations", file=sys.stderr)
                break
            await task.deferLater(reactor, 0.1, lambda: None)
        converged = time.perf_counter() - t0
        succeeded = 0
        for op_id in ops:
            code, op = await call("GET", f"/v1/power_ops/{op_id}")
            succeeded += op["state"] == "succeeded"
        on = sum(1 for s in sim.systems.values() if s.power_state == "On")
        latencies.sort()
        print(f"nodes: {args.nodes}, switch delay {args.switch_delay}s (simulated Redfish)")
        print(f"register {args.nodes} nodes through the API: {register:.2f} s "
              f"({args.nodes / register:.0f} nodes/s, sequential)")
        print(f"power-on requests: {requested:.2f} s for {args.nodes} "
              f"(median {statistics.median(latencies) * 1000:.1f} ms, "
              f"p95 {latencies[int(len(latencies) * 0.95) - 1] * 1000:.1f} ms per request)")
        print(f"all operations finished {converged:.2f} s after the first request; "
              f"{succeeded} succeeded; {on} systems on")
        await pserv.stopService()
        await region.stopService()
        await sim.stop()
        await http.closeCachedConnections()
    finally:
        for stop in reversed(stops):
            stop()


def main():
    args = parse()
    reactor = reactor_choice.install()
    from twisted.internet import defer

    def go():
        d = defer.ensureDeferred(bench(reactor, args))
        d.addErrback(lambda f: f.printTraceback())
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()


if __name__ == "__main__":
    main()
