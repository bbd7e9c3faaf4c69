"""
How much batching outlet queries saves, on loopback against the simulator.

Prints, for a 48-outlet PDU: querying every outlet one GET at a time
(sequentially, and all at once), one GET carrying all 48 varbinds, and a
GETBULK walk; then N such PDUs queried concurrently, one request each.
Bounded loops only; 127.0.0.1 only.

    .venv/bin/python bench/snmp_many_outlets.py [--outlets 48] [--pdus 20] [--rounds 5]
"""

import argparse
import statistics
import time

from twisted.internet import asyncioreactor

asyncioreactor.install()

from twisted.internet import defer, task  # noqa: E402

from powerctl.drivers.interface import Timing  # noqa: E402
from powerctl.drivers.snmp import SCHEMA, SnmpDriverType  # noqa: E402
from powerctl.sim import snmp as simsnmp  # noqa: E402


def settings(sim, outlet=1, **extra):
    return SCHEMA.validate({"host": "127.0.0.1", "port": sim.port, "family": sim.options.family,
                            "outlet": outlet, "timeout": 2.0, "retries": 0, **extra})


async def timed(rounds, make):
    """Median and max wall time (ms) of ``rounds`` runs of ``await make()``."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        await make()
        times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times), max(times)


def report(label, figures, requests):
    median, worst = figures
    print(f"  {label:<48} median {median:8.1f} ms   max {worst:8.1f} ms   {requests} request(s)")


async def main(reactor, args):
    dt = SnmpDriverType(reactor, Timing(timeout=10.0, retries=0))
    sims = [await simsnmp.start(reactor, simsnmp.SimOptions(family="apc-rpdu", outlets=args.outlets,
                                                          initial="on"))
            for _ in range(args.pdus)]
    try:
        one = sims[0]
        outlets = range(1, args.outlets + 1)
        drivers = [dt.bind(settings(one, n)) for n in outlets]
        await drivers[0].query()  # engine up
        print(f"{args.outlets} outlets, apc-rpdu simulator, SNMP v2c, loopback, {args.rounds} rounds")

        async def sequential():
            for d in drivers:
                await d.query()

        report("one GET per outlet, sequential", await timed(args.rounds, sequential), args.outlets)
        report("one GET per outlet, all concurrent",
               await timed(args.rounds, lambda: defer.gatherResults([d.query() for d in drivers])),
               args.outlets)
        report("one GET with all outlets (query_outlets)",
               await timed(args.rounds, lambda: dt.query_outlets(settings(one), outlets)), 1)
        report("GETBULK walk of the status column",
               await timed(args.rounds, lambda: dt.query_outlets(settings(one))), "≥1")
        report(f"{args.pdus} PDUs concurrently, one GET each",
               await timed(args.rounds, lambda: defer.gatherResults(
                   [dt.query_outlets(settings(s), outlets) for s in sims])), args.pdus)
        # Unbounded, 960 single GETs time out: manager and agents share one
        # CPU here, so per-outlet polling must be throttled (50 in flight).
        gate = defer.DeferredSemaphore(50)
        report(f"{args.pdus} PDUs x {args.outlets} outlets, one GET each, 50 in flight",
               await timed(max(1, args.rounds // 2), lambda: defer.gatherResults(
                   [gate.run(dt.bind(settings(s, n)).query) for s in sims for n in outlets])),
               args.pdus * args.outlets)
    finally:
        for sim in sims:
            await sim.stop()
        await dt.close()


def run(reactor):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--outlets", type=int, default=48)
    parser.add_argument("--pdus", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    return defer.ensureDeferred(main(reactor, parser.parse_args()))


if __name__ == "__main__":
    task.react(run)
