"""
The cost of journalling power requests in the store, without HTTP: a
private PostgreSQL, N nodes, then

* ``single``: ``OperationStore.request`` one at a time (latency per request)
  and with C in flight (requests/s), each on a random node;
* ``bulk``: ``OperationStore.request_many`` over all N nodes, once.

    .venv/bin/python bench/power_request.py [--nodes 1000] [--requests 2000] [--concurrency 16]

Prints figures; asserts nothing.  Bounded by the counts given (about 20 s
with the defaults on a 2-core machine).
"""

import argparse
import random
import statistics
import sys
import time

from powerctl import reactor as reactor_choice


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--pool", type=int, default=8, help="database connections")
    return p.parse_args()


async def bench(reactor, args):
    import psycopg2
    from psycopg2.extras import Json
    from cryptography.fernet import Fernet
    from twisted.internet import defer
    from txpostgres import txpostgres

    from powerctl.devtools.pgcluster import PostgresCluster
    from powerctl.drivers.standard import standard_catalogue
    from powerctl.region import schema
    from powerctl.region.store import Store
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
        with conn.cursor() as cur:
            cur.execute("INSERT INTO clusters (name) VALUES ('c')")
            power = {"mode": "single", "agents": [{"driver": "ipmi",
                                                   "params": {"host": "10.0.0.1"}}]}
            cur.executemany("INSERT INTO nodes (name, cluster, power) VALUES (%s, 'c', %s)",
                            [(f"n{i:05d}", Json(power)) for i in range(args.nodes)])
        conn.commit()
        conn.close()
        pool = txpostgres.ConnectionPool(None, dsn, min=args.pool)
        await pool.start()
        store = Store(pool, standard_catalogue(reactor), vault=Vault([Fernet.generate_key()]))
        rng = random.Random(1)
        names = [f"n{i:05d}" for i in range(args.nodes)]

        latencies = []
        start = time.perf_counter()
        for _ in range(args.requests // 4):
            t = time.perf_counter()
            await store.ops.request(rng.choice(names), rng.choice(["on", "off"]), "bench")
            latencies.append(time.perf_counter() - t)
        sequential = time.perf_counter() - start

        sem = defer.DeferredSemaphore(args.concurrency)
        start = time.perf_counter()
        await defer.gatherResults([
            sem.run(lambda: defer.ensureDeferred(store.ops.request(
                rng.choice(names), rng.choice(["on", "off"]), "bench")))
            for _ in range(args.requests)])
        concurrent = time.perf_counter() - start

        start = time.perf_counter()
        _, ops = await store.ops.request_many("on", cluster="c", requester="bench")
        bulk = time.perf_counter() - start
        pool.close()

        latencies.sort()
        print(f"single request, one at a time: {args.requests // 4} requests, "
              f"median {statistics.median(latencies) * 1e3:.2f} ms, "
              f"p95 {latencies[int(len(latencies) * 0.95)] * 1e3:.2f} ms, "
              f"{args.requests // 4 / sequential:.0f} req/s")
        print(f"single request, {args.concurrency} in flight over {args.pool} connections: "
              f"{args.requests} requests in {concurrent:.2f} s, "
              f"{args.requests / concurrent:.0f} req/s")
        print(f"bulk request: {len(ops)} operations journalled in one transaction in "
              f"{bulk * 1e3:.0f} ms ({len(ops) / bulk:.0f} operations/s)")
    finally:
        pg.stop()


def main():
    args = parse()
    reactor_choice.install()
    from twisted.internet import defer, task

    def run(reactor):
        return defer.ensureDeferred(bench(reactor, args))

    task.react(run)


if __name__ == "__main__":
    sys.exit(main())
