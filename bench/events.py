"""
The live event stream under load (issue 14): one region on a throwaway
PostgreSQL, ``--subscribers`` clients on ``GET /v1/events`` and a burst of
``--events`` operation inserts (one event each, one transaction each),
paced at ``--rate`` per second (0: as fast as they go) by ``--writers``
processes.

Three processes besides PostgreSQL, as in production the writers, the
region and the clients are not one process: this one runs the region;
a child runs the clients (plain non-blocking sockets, each noting when
each ``id:`` line arrives); other children write.  The delay of an event
is its arrival at a client minus its ``at`` in the journal (the
``clock_timestamp()`` of the trigger, a fraction of a millisecond before
its commit: slightly more than commit-to-client).

    .venv/bin/python bench/events.py [--subscribers 100] [--events 5000] [--rate 1000]
                                     [--writers 2]

Prints p50/p95/max delay, the events/s each client got and the total
deliveries/s; asserts nothing.  Bounded: it gives up after ``--limit``
seconds (default 100).
"""

import argparse
import json
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.abspath(__file__)


def percentile(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


# -- the clients' process ---------------------------------------------------

def clients(port, token, count, expected, limit, dsn):
    """Open ``count`` streams, say "ready", read until each has ``expected`` events."""
    request = (f"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
               f"Authorization: Bearer {token}\r\n\r\n").encode()
    sel = selectors.DefaultSelector()
    state = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(request)
        s.setblocking(False)
        entry = {"sock": s, "buf": b"", "got": [], "live": False}
        state.append(entry)
        sel.register(s, selectors.EVENT_READ, entry)
    deadline = time.time() + limit
    ready_said = False
    done = 0
    while done < count and time.time() < deadline:
        for key, _ in sel.select(timeout=0.5):
            entry = key.data
            try:
                data = entry["sock"].recv(1 << 20)
            except BlockingIOError:
                continue
            now = time.time()
            if not data:
                sel.unregister(entry["sock"])
                done += 1
                continue
            buf = entry["buf"] + data
            start = 0
            while True:
                i = buf.find(b"\nid: ", start)
                if i < 0:
                    break
                j = buf.find(b"\n", i + 5)
                if j < 0:
                    break
                entry["got"].append((int(buf[i + 5:j]), now))
                start = j
            if not entry["live"] and b": connected" in buf:
                entry["live"] = True
            entry["buf"] = buf[start:]
            if len(entry["got"]) >= expected:
                sel.unregister(entry["sock"])
                entry["sock"].close()
                done += 1
        if not ready_said and all(e["live"] for e in state):
            ready_said = True
            print("ready", flush=True)
    import psycopg2

    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT seq, extract(epoch FROM at) FROM events WHERE type = 'op'")
        at = {seq: float(t) for seq, t in cur.fetchall()}
    conn.close()
    delays, rates, gaps = [], [], 0
    first = min(at.values()) if at else 0
    for entry in state:
        seqs = [s for s, _ in entry["got"]]
        gaps += int(seqs != sorted(set(seqs)))
        delays.extend(t - at[s] for s, t in entry["got"] if s in at)
        if entry["got"]:
            rates.append(len(entry["got"]) / max(1e-6, entry["got"][-1][1] - first))
    received = sum(len(e["got"]) for e in state)
    last = max((e["got"][-1][1] for e in state if e["got"]), default=first)
    print(json.dumps({
        "received": received, "complete": sum(len(e["got"]) >= expected for e in state),
        "out_of_order": gaps, "p50_ms": percentile(delays, 50) * 1000,
        "p95_ms": percentile(delays, 95) * 1000, "max_ms": max(delays or [0]) * 1000,
        "events_per_s_per_client": percentile(rates, 50),
        "deliveries_per_s": received / max(1e-6, last - first)}), flush=True)


# -- the writer's process ---------------------------------------------------

def writer(dsn, events, rate):
    import psycopg2

    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cur = conn.cursor()
    start = time.time()
    for i in range(events):
        if rate:
            wait = start + i / rate - time.time()
            if wait > 0:
                time.sleep(wait)
        cur.execute("INSERT INTO power_ops (node, action, requester) VALUES"
                    " ('bench-node', 'query', 'bench')")
    took = time.time() - start
    print(json.dumps({"written": events, "seconds": took, "rate": events / took}), flush=True)


# -- the region's process ---------------------------------------------------

async def bench(reactor, args):
    import psycopg2
    from twisted.internet import threads

    from powerctl.config import RegionConfig
    from powerctl.devtools.pgcluster import PostgresCluster
    from powerctl.drivers.catalogue import DriverCatalogue
    from powerctl.drivers.manual import ManualDriverType
    from powerctl.region.service import RegionService
    from powerctl.region.tokens import create_token_sync
    from powerctl.region.vault import create_key_file

    pg = PostgresCluster.create()
    directory = tempfile.mkdtemp()
    region = None
    try:
        conn = psycopg2.connect(pg.dsn())
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE bench")
        conn.close()
        dsn = pg.dsn("bench")
        secret = b"bench-secret-of-enough-length"
        secret_file = os.path.join(directory, "secret")
        with open(secret_file, "wb") as f:
            f.write(secret)
        create_key_file(os.path.join(directory, "key"))
        region = RegionService(RegionConfig(
            name="bench", database=dsn, api_endpoint="tcp:0:interface=127.0.0.1",
            rpc_endpoint="tcp:0:interface=127.0.0.1", secret_file=secret_file,
            key_file=os.path.join(directory, "key")),
            secret, reactor, DriverCatalogue([ManualDriverType(reactor)]), pool_size=8)
        region.startService()
        await region.whenReady()
        port = region.api_port.getHost().port
        conn = psycopg2.connect(dsn)
        token = create_token_sync(conn, "bench", "viewer", created_by="bench")[1]
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("INSERT INTO clusters (name) VALUES ('c1')")
            cur.execute("INSERT INTO nodes (name, cluster, power) VALUES ('bench-node', 'c1',"
                        " '{\"mode\": \"single\", \"agents\": [{\"driver\": \"manual\"}]}')")
        conn.close()

        def run_children():
            readers = subprocess.Popen(
                [sys.executable, HERE, "--clients-child", str(port), token,
                 str(args.subscribers), str(args.events), str(args.limit), dsn],
                stdout=subprocess.PIPE, text=True)
            line = readers.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"the clients did not connect: {line!r}")
            share = args.events // args.writers
            writers = [subprocess.Popen(
                [sys.executable, HERE, "--writer-child", dsn,
                 str(share if i else args.events - share * (args.writers - 1)),
                 str(args.rate / args.writers)], stdout=subprocess.PIPE, text=True)
                for i in range(args.writers)]
            reports = [json.loads(w.communicate(timeout=args.limit)[0]) for w in writers]
            out, _ = readers.communicate(timeout=args.limit)
            took = max(r["seconds"] for r in reports)
            return {"rate": args.events / took}, json.loads(out)

        written, seen = await threads.deferToThread(run_children)
        print(f"subscribers {args.subscribers}, events {args.events}, asked rate "
              f"{args.rate or 'max'}/s, written at {written['rate']:.0f}/s by "
              f"{args.writers} writer(s), one transaction per event")
        print(f"  delay commit->client: p50 {seen['p50_ms']:.1f} ms, p95 {seen['p95_ms']:.1f}"
              f" ms, max {seen['max_ms']:.1f} ms")
        print(f"  per client {seen['events_per_s_per_client']:.0f} events/s; all clients "
              f"{seen['deliveries_per_s']:.0f} deliveries/s; "
              f"{seen['complete']}/{args.subscribers} got all {args.events}, "
              f"{seen['out_of_order']} out of order")
    finally:
        if region is not None and region.running:
            await region.stopService()
        pg.stop()


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--clients-child":
        port, token, count, expected, limit, dsn = sys.argv[2:8]
        return clients(int(port), token, int(count), int(expected), float(limit), dsn)
    if len(sys.argv) > 1 and sys.argv[1] == "--writer-child":
        return writer(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s (0: max)")
    parser.add_argument("--writers", type=int, default=2,
                        help="writer processes sharing the burst (default 2)")
    parser.add_argument("--limit", type=float, default=100.0, help="seconds at most")
    args = parser.parse_args()
    from powerctl.reactor import install

    install()
    from twisted.internet import defer, task

    task.react(lambda reactor: defer.ensureDeferred(bench(reactor, args)))


if __name__ == "__main__":
    main()
