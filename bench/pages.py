"""
Lists, the status page and /metrics over HTTP with many nodes: a private
PostgreSQL with N nodes (in clusters of 500), the region's API and web
root on loopback in this process, treq as the client.

    .venv/bin/python bench/pages.py [--nodes 10000] [--requests 50] [--open-ops 0]

Prints p50/p95 latency, answer size and CPU time per request of this
process (the region and the client; PostgreSQL's excluded: steadier than
latency on a loaded machine) of ``GET /v1/nodes`` (the default page, a
page deep in the list, a filtered page), ``GET /`` and ``GET /metrics``,
and the time to walk every page of ``/v1/nodes`` at 1000 a page.
``--only TEXT`` times the figures whose label holds TEXT; ``--profile``
prints where the time went (cProfile, ``--sort`` order).  Asserts
nothing; bounded by the counts given (well under a minute by default).
"""

import argparse
import cProfile
import pstats
import sys
import time

from powerctl import reactor as reactor_choice


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, default=10_000)
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--open-ops", type=int, default=0,
                   help="pending operations journalled first (the page shows up to 200)")
    p.add_argument("--only", default="",
                   help="time only the figures whose label contains this text")
    p.add_argument("--sort", default="cumulative", help="the profile's order (cProfile sort key)")
    p.add_argument("--profile", action="store_true",
                   help="print the 25 costliest functions (cumulative) of the timed requests")
    return p.parse_args()


async def bench(reactor, args):
    import psycopg2
    import treq
    from cryptography.fernet import Fernet
    from psycopg2.extras import Json
    from twisted.web.client import Agent, HTTPConnectionPool
    from twisted.web.server import Site
    from txpostgres import txpostgres

    from powerctl.cli.client import next_cursor
    from powerctl.devtools.pgcluster import PostgresCluster
    from powerctl.drivers.standard import standard_catalogue
    from powerctl.region import schema, web
    from powerctl.region.api import api_root
    from powerctl.region.guard import ApiGuard, protect_web
    from powerctl.region.store import Store
    from powerctl.region.tokens import TokenStore, create_token_sync
    from powerctl.region.vault import Vault

    pg = PostgresCluster.create()
    try:
        conn = psycopg2.connect(pg.dsn())
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE bench")
        conn.close()
        dsn = pg.dsn("bench")
        conn = psycopg2.connect(dsn)
        schema.migrate_sync(conn)
        power = {"mode": "single", "agents": [{"driver": "ipmi",
                                               "params": {"host": "10.0.0.1"}}]}
        clusters = sorted({f"rack{i // 500:02d}" for i in range(args.nodes)})
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO clusters (name) VALUES (%s)", [(c,) for c in clusters])
            cur.executemany(
                "INSERT INTO nodes (name, cluster, power, power_state) VALUES (%s, %s, %s, %s)",
                [(f"n{i:06d}", f"rack{i // 500:02d}", Json(power), ("on", "off")[i % 2])
                 for i in range(args.nodes)])
            cur.executemany(
                "INSERT INTO power_ops (node, action, requester) VALUES (%s, 'on', 'bench')",
                [(f"n{i % args.nodes:06d}",) for i in range(args.open_ops)])
            cur.execute("ANALYZE")
        conn.commit()
        _, token = create_token_sync(conn, "bench", "admin")
        conn.close()

        pool = txpostgres.ConnectionPool(None, dsn, min=4)
        await pool.start()
        catalogue = standard_catalogue(reactor)
        store = Store(pool, catalogue, vault=Vault([Fernet.generate_key()]))
        guard = ApiGuard(TokenStore(pool), reactor)
        root = api_root(store, catalogue, guard=guard)
        web.add_to(root, store)
        protect_web(root, guard)
        port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        base = f"http://127.0.0.1:{port.getHost().port}"
        http = HTTPConnectionPool(reactor, persistent=True)
        client = treq.client.HTTPClient(Agent(reactor, pool=http))
        headers = {"Authorization": [f"Bearer {token}"]}
        profiler = cProfile.Profile() if args.profile else None

        async def get(path):
            start = time.perf_counter()
            response = await client.get(base + path, headers=headers)
            body = await response.content()
            assert response.code == 200, (path, response.code, body[:200])
            return time.perf_counter() - start, len(body), response

        deep = f"/v1/nodes?after={_cursor_of('nodes', f'n{args.nodes // 2:06d}')}"
        for label, path in (("GET /v1/nodes (first page)", "/v1/nodes"),
                            ("GET /v1/nodes (a page in the middle)", deep),
                            ("GET /v1/nodes?power_state=on&cluster=rack03",
                             "/v1/nodes?power_state=on&cluster=rack03"),
                            ("GET / (status page)", "/"), ("GET /metrics", "/metrics")):
            if args.only not in label:
                continue
            await get(path)  # untimed: the first request of a path opens connections
            times, size = [], 0
            if profiler is not None:
                profiler.enable()
            cpu = time.process_time()
            for _ in range(args.requests):
                elapsed, size, _ = await get(path)
                times.append(elapsed)
            cpu = (time.process_time() - cpu) / args.requests
            if profiler is not None:
                profiler.disable()
            times.sort()
            print(f"{label}: p50 {times[len(times) // 2] * 1e3:.1f} ms, "
                  f"p95 {times[int(len(times) * 0.95)] * 1e3:.1f} ms, {size / 1024:.0f} KiB, "
                  f"{cpu * 1e3:.1f} ms CPU of this process (region and client)")
        if profiler is not None:
            pstats.Stats(profiler).sort_stats(args.sort).print_stats(30)
        if not args.only:
            start, pages, cursor = time.perf_counter(), 0, None
            while True:
                _, _, response = await get("/v1/nodes?limit=1000"
                                           + (f"&after={cursor}" if cursor else ""))
                pages += 1
                cursor = next_cursor(response.headers.getRawHeaders("link") or ())
                if cursor is None:
                    break
            print(f"every node, {pages} pages of 1000: "
                  f"{(time.perf_counter() - start) * 1e3:.0f} ms")
        await http.closeCachedConnections()
        await port.stopListening()
        pool.close()
    finally:
        pg.stop()


def _cursor_of(kind, key):
    from powerctl.region import paging

    return paging.encode(kind, key)


def main():
    args = parse()
    reactor_choice.install()
    from twisted.internet import defer, task

    task.react(lambda reactor: defer.ensureDeferred(bench(reactor, args)))


if __name__ == "__main__":
    sys.exit(main())
