"""
How pyghmi behaves with many BMCs at once, on loopback.

Runs the IPMI simulator in a child process (so it does not compete with the
client for the GIL) with a realistic answer latency, then measures, with
bounded loops and a deadline per case:

1. logins one after another, and k at once (one thread each);
2. queries on one session from several threads at once (why calls to one
   BMC are serialised);
3. queries across N BMCs (one session each) with T threads;
4. the ``ipmi`` driver itself (its pool, login cap and per-BMC lock) querying
   every BMC at once.

Usage: ``.venv/bin/python bench/ipmi_many_bmcs.py [--bmcs 100] [--latency 0.002]``
Prints one line per case; finishes in well under two minutes.
"""

import argparse
import concurrent.futures
import json
import statistics
import subprocess
import sys
import time

USER, PASSWORD = b"admin", b"password"


def start_simulator(count, latency):
    """
    ``powerctl sim ipmi --json`` in a child process; returns (process, ports)
    from the one JSON line it announces itself with.
    """
    child = subprocess.Popen(
        [sys.executable, "-m", "powerctl.cli.main", "sim", "ipmi", "--json",
         "--count", str(count), "--latency", str(latency),
         "--username", USER.decode(), "--password", PASSWORD.decode()],
        stdout=subprocess.PIPE, text=True,
    )
    ports = json.loads(child.stdout.readline())["ports"]
    return child, ports


def login(port):
    from pyghmi.ipmi import command

    cmd = command.Command(bmc="127.0.0.1", userid=USER, password=PASSWORD, port=port)
    cmd.oem_init()
    cmd._oemknown = True  # as the driver does: identify the BMC once
    return cmd


def timed(fn, *args):
    start = time.monotonic()
    try:
        fn(*args)
        return time.monotonic() - start, None
    except Exception as e:  # a bench reports failures, it does not stop
        return time.monotonic() - start, type(e).__name__


def summary(times):
    times = sorted(times)
    if not times:
        return "no samples"
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return (f"median {statistics.median(times) * 1000:7.1f} ms  p99 {p99 * 1000:7.1f} ms"
            f"  max {times[-1] * 1000:7.1f} ms")


def run_parallel(jobs, threads, deadline):
    """Run (fn, args) jobs on ``threads`` threads; (wall, times, errors)."""
    start = time.monotonic()
    pool = concurrent.futures.ThreadPoolExecutor(threads)
    futures = [pool.submit(timed, fn, *args) for fn, args in jobs]
    done, late = concurrent.futures.wait(futures, timeout=deadline)
    pool.shutdown(wait=False, cancel_futures=True)
    results = [f.result() for f in done]
    errors = [e for _, e in results if e] + ["deadline"] * len(late)
    return time.monotonic() - start, [t for t, _ in results], errors


def bench_logins(ports, case_deadline):
    times = [timed(lambda p=p: login(p).ipmi_session.logout())[0] for p in ports[:10]]
    print(f"logins, one at a time (10): {summary(times)}")
    offset = 10
    for k in (2, 5, 10, 20):
        batch = ports[offset:offset + k]
        offset += k
        wall, times, errors = run_parallel(
            [(lambda p: login(p), (p,)) for p in batch], k, case_deadline)
        print(f"logins, {k:3d} at once: wall {wall:6.2f} s  {summary(times)}"
              f"  errors {len(errors)}")
    return offset


def bench_one_session(port, case_deadline):
    cmd = login(port)
    for threads in (1, 5):
        wall, times, errors = run_parallel(
            [(cmd.get_power, ()) for _ in range(20)], threads, case_deadline)
        print(f"20 queries on ONE session, {threads} threads: wall {wall:6.2f} s"
              f"  {summary(times)}  errors {len(errors)}")


def bench_across(sessions, case_deadline):
    for n in (1, 10, 50, 100):
        chosen = sessions[:n]
        if len(chosen) < n:
            break
        for threads in sorted({1, 4, 16, 32, min(n, 64)}):
            if threads > n:
                continue
            rounds = max(1, 200 // n)
            jobs = [(s.get_power, ()) for _ in range(rounds) for s in chosen]
            # one thread per BMC at a time: split by BMC, each job serial per BMC
            wall, times, errors = run_parallel_per_bmc(chosen, rounds, threads,
                                                       case_deadline)
            print(f"{n:3d} BMCs x {rounds:3d} queries, {threads:2d} threads: "
                  f"wall {wall:6.2f} s  {len(jobs) / wall:7.0f} q/s  {summary(times)}"
                  f"  errors {len(errors)}")


def run_parallel_per_bmc(sessions, rounds, threads, deadline):
    """Each BMC's queries run in order in one job, as the driver serialises."""
    def serial(cmd):
        out = []
        for _ in range(rounds):
            out.append(timed(cmd.get_power))
        return out

    start = time.monotonic()
    pool = concurrent.futures.ThreadPoolExecutor(threads)
    futures = [pool.submit(serial, s) for s in sessions]
    done, late = concurrent.futures.wait(futures, timeout=deadline)
    pool.shutdown(wait=False, cancel_futures=True)
    results = [r for f in done for r in f.result()]
    errors = [e for _, e in results if e] + ["deadline"] * len(late)
    return time.monotonic() - start, [t for t, _ in results], errors


def bench_driver(ports, max_threads, max_logins):
    """The driver end to end: every BMC queried at once, twice."""
    from twisted.internet import defer, task

    from powerctl.drivers.interface import Timing
    from powerctl.drivers.ipmi import IpmiDriverType

    async def main(reactor):
        driver_type = IpmiDriverType(reactor, timing=Timing(timeout=20, retries=0),
                                     max_threads=max_threads, max_logins=max_logins)
        drivers = [driver_type.bind(driver_type.schema.validate(
            {"host": "127.0.0.1", "port": p, "username": USER.decode(),
             "password": PASSWORD.decode(), "min_interval": 0})) for p in ports]
        for label in ("with logins", "sessions reused"):
            start = time.monotonic()
            results = await defer.DeferredList([d.query() for d in drivers],
                                               consumeErrors=True)
            failed = sum(1 for ok, _ in results if not ok)
            print(f"driver: {len(ports)} BMCs at once ({label}), threads {max_threads},"
                  f" login cap {max_logins}: wall {time.monotonic() - start:6.2f} s"
                  f"  failed {failed}")
        await driver_type.close()

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--bmcs", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.002)
    parser.add_argument("--case-deadline", type=float, default=15.0)
    parser.add_argument("--driver-threads", type=int, default=32)
    parser.add_argument("--driver-logins", type=int, default=16)
    args = parser.parse_args(argv)
    from powerctl.reactor import install

    install()  # the driver bench uses the product's reactor
    # fresh BMCs for every case: pyghmi caches sessions per address and user
    count = 10 + 37 + 1 + 100 + args.bmcs
    child, ports = start_simulator(count, args.latency)
    started = time.monotonic()
    try:
        print(f"pyghmi against {count} simulated BMCs, answer latency "
              f"{args.latency * 1000:g} ms")
        used = bench_logins(ports, args.case_deadline)
        bench_one_session(ports[used], args.case_deadline)
        used += 1
        sessions = [login(p) for p in ports[used:used + 100]]
        used += 100
        bench_across(sessions, args.case_deadline)
        for s in sessions:
            s.ipmi_session.logout()
        bench_driver(ports[used:used + args.bmcs], args.driver_threads,
                     args.driver_logins)
    finally:
        child.terminate()
        child.wait(5)
        print(f"total {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
