"""
How long fencing a fleet takes, through PDU outlets (SNMP simulators, in
this process) and through BMCs (IPMI simulators, in a child process so they
do not compete with the client for the GIL), on loopback.

Each node is a real power topology (``build_node_power``) run with the
product's drivers; a fence is a verified off of every device of the acting
level.  Nodes are fenced ``--concurrency`` at a time (as the pserv's
priority slots would), all requested at once.  Each case runs twice: the
nodes on (a command and a verification each), then already off (queries
only, no command).  Bounded: every case has a deadline and the defaults
finish in well under two minutes.

    .venv/bin/python bench/fence.py [--pdu-nodes 480] [--outlets 48] [--dual]
                                    [--ipmi-nodes 100] [--concurrency 64]

Prints figures; asserts nothing.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

from powerctl.reactor import install

install()

from twisted.internet import defer, task  # noqa: E402

from powerctl.drivers.catalogue import DriverCatalogue  # noqa: E402
from powerctl.drivers.interface import Timing  # noqa: E402
from powerctl.drivers.ipmi import IpmiDriverType  # noqa: E402
from powerctl.drivers.snmp import SnmpDriverType  # noqa: E402
from powerctl.power import Action  # noqa: E402
from powerctl.pserv.executor import build_node_power  # noqa: E402
from powerctl.sim import snmp as simsnmp  # noqa: E402

TIMING = Timing(timeout=5.0, retries=1, backoff=0.2, verify_timeout=20.0, poll_interval=0.1)


def summary(times):
    times = sorted(times)
    if not times:
        return "no samples"
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return (f"per node median {statistics.median(times) * 1000:7.1f} ms"
            f"  p99 {p99 * 1000:7.1f} ms  max {times[-1] * 1000:7.1f} ms")


async def fence_all(label, nodes, concurrency, deadline):
    """Fence every node, ``concurrency`` at a time; print one line."""
    gate = defer.DeferredSemaphore(concurrency)
    latencies, failures = [], []

    async def one(power):
        start = time.monotonic()
        try:
            result = await power.run(Action.FENCE)
            assert result.state.value == "off"
            latencies.append(time.monotonic() - start)
        except Exception as e:  # a bench reports failures, it does not stop
            failures.append(type(e).__name__)

    start = time.monotonic()
    work = defer.DeferredList([gate.run(lambda p=p: defer.ensureDeferred(one(p)))
                               for p in nodes])
    from twisted.internet import reactor

    work.addTimeout(deadline, reactor)
    try:
        await work
    except defer.TimeoutError:
        failures.append("deadline")
    wall = time.monotonic() - start
    rate = len(latencies) / wall if wall else 0.0
    print(f"  {label:<34} {len(nodes):5d} nodes  wall {wall:7.2f} s  {rate:7.1f} fences/s"
          f"  failed {len(failures)}\n  {'':<34} {summary(latencies)}")


async def bench_pdus(reactor, args):
    driver_type = SnmpDriverType(clock=reactor, timing=TIMING)
    catalogue = DriverCatalogue([driver_type])
    per_node = 2 if args.dual else 1
    outlets_needed = args.pdu_nodes * per_node
    pdus = -(-outlets_needed // args.outlets)
    sims = [await simsnmp.start(reactor, simsnmp.SimOptions(
        family="apc-rpdu", outlets=args.outlets, initial="on")) for _ in range(pdus)]
    try:
        outlets = [(sim, n) for sim in sims for n in range(1, args.outlets + 1)]

        def agent(sim, n):
            return {"driver": "snmp", "params": {
                "host": "127.0.0.1", "port": sim.port, "family": "apc-rpdu", "outlet": n,
                "community": "public", "write_community": "private", "retries": 0,
                "timeout": 5.0}}

        nodes = [build_node_power(catalogue, {"levels": [{"agents": [
            agent(*outlets[i * per_node + k]) for k in range(per_node)]}]})
            for i in range(args.pdu_nodes)]
        kind = "dual-PSU (2 outlets, 1 level)" if args.dual else "1 outlet"
        print(f"SNMP: {args.pdu_nodes} nodes of {kind} on {pdus} simulated PDUs "
              f"x {args.outlets} outlets, concurrency {args.concurrency}")
        await fence_all("nodes on", nodes, args.concurrency, args.deadline)
        sets = sum(len(s.sets) for s in sims)
        await fence_all("already off (no command)", nodes, args.concurrency, args.deadline)
        print(f"  SETs received: {sets} then {sum(len(s.sets) for s in sims) - sets} more")
    finally:
        for sim in sims:
            await sim.stop()
        await catalogue.close()


def start_ipmi(count, latency):
    child = subprocess.Popen(
        [sys.executable, "-m", "powerctl.cli.main", "sim", "ipmi", "--json",
         "--count", str(count), "--latency", str(latency), "--power", "on",
         "--username", "admin", "--password", "pw"],
        stdout=subprocess.PIPE, text=True)
    return child, json.loads(child.stdout.readline())["ports"]


async def bench_ipmi(reactor, args):
    child, ports = start_ipmi(args.ipmi_nodes, args.latency)
    driver_type = IpmiDriverType(reactor, timing=TIMING, max_threads=32, max_logins=16)
    catalogue = DriverCatalogue([driver_type])
    try:
        nodes = [build_node_power(catalogue, {"levels": [{"agents": [{
            "driver": "ipmi", "params": {"host": "127.0.0.1", "port": p, "username": "admin",
                                         "password": "pw", "min_interval": 0}}]}]})
            for p in ports]
        print(f"IPMI: {len(ports)} nodes, one simulated BMC each (child process, answer "
              f"latency {args.latency * 1000:g} ms), driver threads 32, login cap 16, "
              f"concurrency {args.concurrency}")
        await fence_all("nodes on (with logins)", nodes, args.concurrency, args.deadline)
        await fence_all("already off (sessions reused)", nodes, args.concurrency,
                        args.deadline)
    finally:
        await catalogue.close()
        child.terminate()
        child.wait(5)


async def main(reactor):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--pdu-nodes", type=int, default=480)
    parser.add_argument("--outlets", type=int, default=48)
    parser.add_argument("--dual", action="store_true",
                        help="each PDU node has two outlets in one level")
    parser.add_argument("--ipmi-nodes", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.002)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--deadline", type=float, default=40.0,
                        help="seconds per case before it is cut short")
    args = parser.parse_args()
    started = time.monotonic()
    if args.pdu_nodes:
        await bench_pdus(reactor, args)
    if args.ipmi_nodes:
        await bench_ipmi(reactor, args)
    print(f"total {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
