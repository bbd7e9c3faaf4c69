"""
The REST API's figures of issue 14's table, each beside a baseline measured
in the same run with the same client: a trivial ``twisted.web`` resource in
the same process and reactor, answering 202 with a small JSON body.

* ``POST /v1/nodes/<n>/power`` accepted per second, ``--concurrency``
  requests in flight, spread over ``--nodes`` nodes (target: at least half
  the trivial resource's rate);
* ``GET /v1/nodes``, ``GET /`` and ``GET /metrics`` with ``--nodes`` nodes
  (10,000 by default): p50/p95 latency and size (targets: p95 < 20 ms for
  the node list, < 50 ms for the page and the metrics).

A private PostgreSQL, the region and the client share this machine (and the
client shares the region's reactor), so the ratios say more than the
absolute figures.  The nodes are written straight into the database
(manual-driver nodes: no pserv needed, operations stay pending).

    .venv/bin/python bench/api.py [--nodes 10000] [--requests 2000]
        [--concurrency 16] [--samples 40]

Prints one table; asserts nothing.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))



def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=10_000)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--samples", type=int, default=40)
    p.add_argument("--rounds", type=int, default=4,
                   help="the POSTs alternate between the baseline and powerctl in this many rounds")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after the table, profile the POST phase (cProfile of this process:"
                        " region and client) and print its N costliest functions")
    p.add_argument("--json", action="store_true",
                   help="one JSON row per line (for bench/table.py) instead of the table")
    return p.parse_args()


def trivial_site():
    """The baseline: the least a twisted.web resource can do for a request."""
    from twisted.web import resource, server

    class Accepted(resource.Resource):
        isLeaf = True

        def render(self, request):
            request.setResponseCode(202)
            request.setHeader(b"content-type", b"application/json")
            return b'{"id": 1, "state": "pending"}'

    site = server.Site(Accepted())
    site.noisy = False
    return site


async def rate(call, paths, concurrency, body, codes=None):
    """
    ``(requests per second, answers by status)`` for POSTs to ``paths``,
    ``concurrency`` at a time (``codes``: a dict to count the answers into).
    """
    from twisted.internet import defer

    todo = iter(paths)
    codes = {} if codes is None else codes

    async def worker():
        for path in todo:
            code, _ = await call("POST", path, body, raw=True)
            codes[code] = codes.get(code, 0) + 1

    started = time.perf_counter()
    await defer.gatherResults([defer.ensureDeferred(worker()) for _ in range(concurrency)])
    return len(paths) / (time.perf_counter() - started), codes


async def latency(call, path, samples):
    """(p50 ms, p95 ms, bytes) of ``samples`` GETs of ``path``, one at a time."""
    times, size = [], 0
    for _ in range(samples):
        started = time.perf_counter()
        code, body = await call("GET", path, raw=True)
        times.append((time.perf_counter() - started) * 1000)
        if not 200 <= code < 300:
            raise RuntimeError(f"GET {path}: {code} {body[:200]!r}")
        size = len(body)
    times.sort()
    return statistics.median(times), times[max(0, int(len(times) * 0.95) - 1)], size


async def profile(call, paths, concurrency, body, top):
    """cProfile of POSTs to ``paths``: where the region (and the client) spend their CPU."""
    import cProfile
    import pstats

    # a CPU clock: time spent waiting for PostgreSQL or the scheduler is not ours
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    try:
        await rate(call, paths, concurrency, body)
    finally:
        prof.disable()
    stats = pstats.Stats(prof, stream=sys.stderr)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats("powerctl|txpostgres|twisted/web/(server|http)", top)


def insert_nodes(dsn, count):
    import psycopg2

    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO clusters (name) VALUES ('rack1') ON CONFLICT DO NOTHING")
        power = {"mode": "single", "agents": [{"driver": "manual", "params": {"label": "x"}}]}
        cur.execute("INSERT INTO nodes (name, cluster, power) SELECT"
                    " 'n' || lpad(g::text, 6, '0'), 'rack1', %s::jsonb"
                    " FROM generate_series(1, %s) g", (json.dumps(power), count))
    conn.close()


async def bench(reactor, args):
    from twisted.internet import endpoints

    from harness import RegionHarness

    harness = await RegionHarness.start(reactor)
    try:
        insert_nodes(harness.dsn, args.nodes)
        port = await endpoints.serverFromString(
            reactor, "tcp:0:interface=127.0.0.1").listen(trivial_site())
        call = harness.client(persistent=args.concurrency)
        trivial_api = f"http://127.0.0.1:{port.getHost().port}"
        real_api = harness.api
        names = [f"n{1 + i % args.nodes:06d}" for i in range(args.requests)]
        body = {"action": "on"}
        # warm both up (connections, caches), then measure side by side
        await rate(call, [f"/v1/nodes/{n}/power" for n in names[:100]], args.concurrency, body)
        harness.api = trivial_api
        await rate(call, ["/power"] * 100, args.concurrency, body)
        # In alternating rounds, so that a burst of other work on a shared
        # machine weighs on both figures alike rather than on one of them.
        codes, base_time, api_time = {}, 0.0, 0.0
        step = -(-args.requests // args.rounds)
        for start in range(0, args.requests, step):
            chunk = names[start:start + step]
            harness.api = trivial_api
            base_time += len(chunk) / (await rate(call, ["/power"] * len(chunk),
                                                  args.concurrency, body))[0]
            harness.api = real_api
            api_time += len(chunk) / (await rate(call, [f"/v1/nodes/{n}/power" for n in chunk],
                                                 args.concurrency, body, codes))[0]
        base_rate, api_rate = args.requests / base_time, args.requests / api_time
        harness.api = trivial_api
        base_get = await latency(call, "/x", args.samples)
        harness.api = real_api
        rows = [("POST power accepted/s", base_rate, api_rate, api_rate / base_rate,
                 ">= 0.5 x", api_rate / base_rate >= 0.5)]
        for path, target in (("/v1/nodes", 20.0), ("/", 50.0), ("/metrics", 50.0)):
            p50, p95, size = await latency(call, path, args.samples)
            rows.append((f"GET {path} p95 ms ({size / 1024:.0f} KiB, p50 {p50:.1f})",
                         base_get[1], p95, base_get[1] / p95, f"< {target:g} ms",
                         p95 < target))
        if args.profile:
            await profile(call, [f"/v1/nodes/{n}/power" for n in names],
                          args.concurrency, body, args.profile)
        await port.stopListening()
    finally:
        await harness.close()
    note = (f"{args.nodes} nodes; {args.requests} POSTs, {args.concurrency} in flight;"
            f" in {args.rounds} alternating rounds; {args.samples} GETs each;"
            f" answers to the POSTs: {codes}")
    if args.json:
        for i, (name, base, value, ratio, target, ok) in enumerate(rows):
            print(json.dumps({"figure": name, "baseline": base, "value": value, "ratio": ratio,
                              "target": target, "ok": ok, "note": "" if i else note}))
        return
    print(note)
    print(f"{'figure':44} {'baseline':>9} {'powerctl':>9} {'ratio':>7}  {'target':10} ok")
    for name, base, value, ratio, target, ok in rows:
        print(f"{name:44} {base:9.1f} {value:9.1f} {ratio:7.2f}  {target:10} "
              f"{'yes' if ok else 'NO'}")


def main():
    from harness import run

    run(bench, parse())


if __name__ == "__main__":
    main()
