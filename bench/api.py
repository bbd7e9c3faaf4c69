"""
The REST API's figures of issue 14's table, each beside a baseline measured
in the same run with the same client: a trivial ``twisted.web`` resource in
the same process and reactor, answering 202 with a small JSON body.

* ``POST /v1/nodes/<n>/power`` accepted per second, ``--concurrency``
  requests in flight, spread over ``--nodes`` nodes (target: at least half
  the trivial resource's rate);
* ``GET /v1/nodes``, ``GET /`` and ``GET /metrics`` with ``--nodes`` nodes
  (10,000 by default): p50/p95 latency and size (targets: p95 < 20 ms for
  the node list, < 50 ms for the page and the metrics), each GET
  alternating with one of the trivial resource (the row's baseline), after
  ten unmeasured ones (each pool connection prepares its statements once).
  ``--secrets`` gives every node two agents with passwords to redact.

A private PostgreSQL, the region and the client share this machine, so the
ratios say more than the absolute figures.  The client shares the region's
reactor unless ``--client-process``: then it runs in a child process (one
for the whole run, its connections kept between rounds), as a real client
would, and neither server pays for its CPU; the table then also gives the
server process's CPU per POST (region, or trivial resource).  The nodes are written straight into the database
(manual-driver nodes: no pserv needed, operations stay pending).

    .venv/bin/python bench/api.py [--nodes 10000] [--requests 2000]
        [--concurrency 16] [--samples 40] [--gets-only] [--secrets]

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
    p.add_argument("--profile-out", metavar="FILE",
                   help="also write the profile's raw stats to FILE (pstats)")
    p.add_argument("--client-process", action="store_true",
                   help="run the load generator (the same client) in a child process")
    p.add_argument("--child", nargs=2, metavar=("TOKEN", "CONCURRENCY"),
                   help=argparse.SUPPRESS)  # the child's side of --client-process
    p.add_argument("--gets-only", action="store_true",
                   help="only the GET rows (no POSTs): quicker, for the list and the pages")
    p.add_argument("--secrets", action="store_true",
                   help="nodes with two agents (IPMI and Redfish) whose passwords the lists"
                        " redact, instead of one manual agent (the POSTs then stay pending"
                        " just the same: no pserv)")
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


async def paired_latency(harness, call, baseline_api, api, path, samples):
    """
    ``((p50, p95) of the baseline, (p50, p95, bytes) of ``path``)``: the
    trivial resource and ``path`` asked in turn, one request at a time, so
    that a burst of other work on a shared machine weighs on both alike
    (one baseline measured before every row let the load of one moment
    decide a row's ratio).
    """
    times = {baseline_api: [], api: []}
    size = 0
    for _ in range(samples):
        for where, asked in ((baseline_api, "/x"), (api, path)):
            harness.api = where
            started = time.perf_counter()
            code, body = await call("GET", asked, raw=True)
            times[where].append((time.perf_counter() - started) * 1000)
            if not 200 <= code < 300:
                raise RuntimeError(f"GET {asked}: {code} {body[:200]!r}")
            if where == api:
                size = len(body)
    harness.api = api

    def cut(found):
        found.sort()
        return statistics.median(found), found[max(0, int(len(found) * 0.95) - 1)]

    return cut(times[baseline_api]), cut(times[api]) + (size,)


def postgres_cpu(datadir):
    """
    CPU seconds used so far by the PostgreSQL server of ``datadir``: its
    postmaster's children (backends and workers) from /proc, 0.0 where
    that cannot be read.  A load-independent figure beside the latencies.
    """
    try:
        with open(os.path.join(datadir, "postmaster.pid")) as f:
            postmaster = int(f.readline())
    except (OSError, ValueError):
        return 0.0
    ticks, total = os.sysconf("SC_CLK_TCK"), 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster or int(entry) == postmaster:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


async def cpu_per_get(harness, call, api, path, samples):
    """(ms CPU of this process, ms CPU of PostgreSQL) a GET of ``path`` costs, on average."""
    harness.api = api
    cpu, pg = time.process_time(), postgres_cpu(harness.pg.datadir)
    for _ in range(samples):
        await call("GET", path, raw=True)
    return ((time.process_time() - cpu) * 1000 / samples,
            (postgres_cpu(harness.pg.datadir) - pg) * 1000 / samples)


async def profile(post, paths, top, out=None):
    """
    cProfile of POSTs to ``paths`` (``post(paths)``): where the region (and
    the client, unless it is a child process) spend their CPU.
    """
    import cProfile
    import pstats

    # a CPU clock: time spent waiting for PostgreSQL or the scheduler is not ours
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    try:
        await post(paths)
    finally:
        prof.disable()
    if out:
        prof.dump_stats(out)
    stats = pstats.Stats(prof, stream=sys.stderr)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats("powerctl|txpostgres|twisted/web/(server|http)", top)
    stats.sort_stats("tottime").print_stats("powerctl|txpostgres", top)


class ChildClient:
    """
    The load generator in a child process (``--client-process``): one JSON
    line per round each way -- ``{"api", "paths", "body"}`` in,
    ``{"rate", "codes"}`` out.
    """

    def __init__(self, reactor, token, concurrency):
        from twisted.internet import protocol

        parent = self

        class Child(protocol.ProcessProtocol):
            def outReceived(self, data):
                parent._received(data)

            def errReceived(self, data):
                sys.stderr.write(data.decode("utf-8", "replace"))

            def processEnded(self, reason):
                parent._ended(reason)

        self._buffer = b""
        self._waiting = None
        self.ended = None
        self.transport = reactor.spawnProcess(
            Child(), sys.executable,
            [sys.executable, os.path.abspath(__file__), "--child", token, str(concurrency)],
            env=os.environ.copy())

    def _received(self, data):
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            waiting, self._waiting = self._waiting, None
            waiting.callback(json.loads(line))

    def _ended(self, reason):
        self.ended = reason
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.errback(reason)

    def rate(self, api, paths, body, codes=None):
        """Like :func:`rate`, the POSTs sent by the child."""
        from twisted.internet import defer

        self._waiting = defer.Deferred()
        self.transport.write(json.dumps({"api": api, "paths": paths, "body": body}).encode()
                             + b"\n")

        def counted(answer):
            if codes is not None:
                for code, n in answer["codes"].items():
                    codes[int(code)] = codes.get(int(code), 0) + n
            return answer["rate"], answer["codes"]

        return self._waiting.addCallback(counted)

    def close(self):
        self.transport.closeStdin()


async def child(reactor, args):
    """The child's side: rounds of POSTs as the parent asks, until its stdin closes."""
    from twisted.internet import defer, protocol, stdio

    from harness import RegionHarness

    token, concurrency = args.child[0], int(args.child[1])
    client = RegionHarness(reactor)  # only for its client: the same one
    client.token = token
    call = client.client(persistent=concurrency)
    done = defer.Deferred()

    class Rounds(protocol.Protocol):
        buffer = b""

        def dataReceived(self, data):
            self.buffer += data
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                order = json.loads(line)
                client.api = order["api"]
                d = defer.ensureDeferred(rate(call, order["paths"], concurrency, order["body"]))
                d.addCallback(lambda r: self.transport.write(
                    json.dumps({"rate": r[0], "codes": r[1]}).encode() + b"\n"))
                d.addErrback(lambda f: (sys.stderr.write(f.getTraceback()),
                                        self.transport.loseConnection()))

        def connectionLost(self, reason):
            done.callback(None)

    stdio.StandardIO(Rounds(), reactor=reactor)
    try:
        await done
    finally:
        await client.close()


#: --secrets: a node's power document with a secret per agent (as stored
#: without the vault: the lists redact it all the same).
SECRET_POWER = {"mode": "concurrent", "agents": [
    {"driver": "ipmi", "params": {"host": "10.0.0.1", "username": "root",
                                  "password": "bench-pw-1"}},
    {"driver": "redfish", "params": {"url": "https://10.0.0.2", "username": "admin",
                                     "password": "bench-pw-2"}}]}


async def post_rows(posts, names, args, trivial_api, real_api, codes, loader):
    """The POST rows: powerctl's rate beside the trivial resource's, in alternating rounds."""
    # warm both up (connections, caches), then measure side by side
    await posts(real_api, [f"/v1/nodes/{n}/power" for n in names[:100]])
    await posts(trivial_api, ["/power"] * 100)
    # In alternating rounds, so that a burst of other work on a shared
    # machine weighs on both figures alike rather than on one of them.
    base_time, api_time, base_cpu, api_cpu = 0.0, 0.0, 0.0, 0.0
    step = -(-args.requests // args.rounds)
    for start in range(0, args.requests, step):
        chunk = names[start:start + step]
        found, cpu = await posts(trivial_api, ["/power"] * len(chunk))
        base_time, base_cpu = base_time + len(chunk) / found, base_cpu + cpu
        found, cpu = await posts(real_api, [f"/v1/nodes/{n}/power" for n in chunk], codes)
        api_time, api_cpu = api_time + len(chunk) / found, api_cpu + cpu
    base_rate, api_rate = args.requests / base_time, args.requests / api_time
    return [("POST power accepted/s", base_rate, api_rate, api_rate / base_rate,
             ">= 0.5 x", api_rate / base_rate >= 0.5),
            (f"POST: ms CPU of {'the server' if loader else 'server + client'}"
             " process a request", base_cpu * 1000 / args.requests,
             api_cpu * 1000 / args.requests, base_cpu / api_cpu, "-", True)]


def insert_nodes(dsn, count, power=None):
    import psycopg2

    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO clusters (name) VALUES ('rack1') ON CONFLICT DO NOTHING")
        power = power or {"mode": "single",
                          "agents": [{"driver": "manual", "params": {"label": "x"}}]}
        cur.execute("INSERT INTO nodes (name, cluster, power) SELECT"
                    " 'n' || lpad(g::text, 6, '0'), 'rack1', %s::jsonb"
                    " FROM generate_series(1, %s) g", (json.dumps(power), count))
    conn.close()


async def bench(reactor, args):
    from twisted.internet import endpoints

    from harness import RegionHarness

    harness = await RegionHarness.start(reactor)
    try:
        insert_nodes(harness.dsn, args.nodes, SECRET_POWER if args.secrets else None)
        port = await endpoints.serverFromString(
            reactor, "tcp:0:interface=127.0.0.1").listen(trivial_site())
        call = harness.client(persistent=args.concurrency)
        trivial_api = f"http://127.0.0.1:{port.getHost().port}"
        real_api = harness.api
        names = [f"n{1 + i % args.nodes:06d}" for i in range(args.requests)]
        body = {"action": "on"}
        loader = ChildClient(reactor, harness.token, args.concurrency) \
            if args.client_process else None

        async def posts(api, paths, codes=None):
            """(rate, CPU seconds of this process) for POSTs to ``paths`` on ``api``."""
            cpu = time.process_time()
            if loader is not None:
                found = (await loader.rate(api, paths, body, codes))[0]
            else:
                harness.api = api
                found = (await rate(call, paths, args.concurrency, body, codes))[0]
            return found, time.process_time() - cpu

        rows, codes = [], {}
        if not args.gets_only:
            rows += await post_rows(posts, names, args, trivial_api, real_api, codes, loader)
        for path, target in (("/v1/nodes", 20.0), ("/", 50.0), ("/metrics", 50.0)):
            harness.api = real_api
            await latency(call, path, 10)  # warm up: each pool connection prepares once
            base, (p50, p95, size) = await paired_latency(harness, call, trivial_api, real_api,
                                                          path, args.samples)
            rows.append((f"GET {path} p95 ms ({size / 1024:.0f} KiB, p50 {p50:.1f})",
                         base[1], p95, base[1] / p95, f"< {target:g} ms", p95 < target))
            base_cpu, _ = await cpu_per_get(harness, call, trivial_api, "/x", args.samples)
            get_cpu, pg_cpu = await cpu_per_get(harness, call, real_api, path, args.samples)
            rows.append((f"GET {path}: ms CPU of server + client"
                         f" process (PostgreSQL: {pg_cpu:.2f})", base_cpu, get_cpu,
                         base_cpu / get_cpu, "-", True))
        if args.profile:
            await profile(lambda paths: posts(real_api, paths),
                          [f"/v1/nodes/{n}/power" for n in names], args.profile,
                          args.profile_out)
        if loader is not None:
            loader.close()
        await port.stopListening()
    finally:
        await harness.close()
    note = (f"{args.nodes} nodes{' with secrets' if args.secrets else ''};"
            f" {0 if args.gets_only else args.requests} POSTs, {args.concurrency} in flight;"
            f" client {'in a child process' if args.client_process else 'in the region process'};"
            f" in {args.rounds} alternating rounds; {args.samples} GETs each,"
            " alternating with the baseline's;"
            f" answers to the POSTs: {codes}")
    if args.json:  # issue 14's rows only (the CPU figure has no target)
        for i, (name, base, value, ratio, target, ok) in enumerate(
                r for r in rows if r[4] != "-"):
            print(json.dumps({"figure": name, "baseline": base, "value": value, "ratio": ratio,
                              "target": target, "ok": ok, "note": "" if i else note}))
        return
    print(note)
    print(f"{'figure':44} {'baseline':>9} {'powerctl':>9} {'ratio':>7}  {'target':10} ok")
    for name, base, value, ratio, target, ok in rows:
        digits = 2 if max(base, value) < 10 else 1
        print(f"{name:44} {base:9.{digits}f} {value:9.{digits}f} {ratio:7.2f}  {target:10} "
              f"{'yes' if ok else 'NO'}")


def main():
    from harness import run

    args = parse()
    run(child if args.child else bench, args)


if __name__ == "__main__":
    main()
