"""
End-to-end throughput: a private PostgreSQL, a region, a pserv and a
simulated Redfish service with N systems, all on loopback in this process.
Registers N nodes, requests power on for all of them through the REST API,
and measures request latency and the time until every operation finished.

    .venv/bin/python bench/fleet.py [--nodes 200] [--switch-delay 0.5]

Prints figures; asserts nothing.  Bounded by --timeout.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))



def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, default=200)
    p.add_argument("--switch-delay", type=float, default=0.5)
    p.add_argument("--timeout", type=float, default=300)
    return p.parse_args()


async def bench(reactor, args):
    from twisted.internet import task

    from harness import SECRET
    from powerctl.config import PservConfig
    from powerctl.drivers.interface import Timing
    from powerctl.drivers.standard import standard_catalogue
    from powerctl.pserv.service import PservService
    from powerctl.sim.redfish import RedfishSimulator, SimSystem

    from harness import RegionHarness

    harness = await RegionHarness.start(reactor)
    reactor_stops = [harness.close]
    try:
        sim = RedfishSimulator(reactor, [SimSystem(id=f"s{i}", name=f"s{i}")
                                         for i in range(args.nodes)],
                               username="u", password="p", delay=args.switch_delay).start()
        timing = Timing(timeout=10, retries=1, verify_timeout=60, poll_interval=0.25)
        pserv = PservService(PservConfig(
            name="bench-pserv", cluster="c", secret_file=harness.secret_file, poll_interval=3600,
            regions=(harness.rpc,)), SECRET, reactor, standard_catalogue(reactor, timing=timing))
        pserv.startService()
        call = harness.client()

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
        succeeded, states = 0, {}
        for op_id in ops:
            code, op = await call("GET", f"/v1/power_ops/{op_id}")
            succeeded += op["state"] == "succeeded"
            states[op["state"]] = states.get(op["state"], 0) + 1
            if op["state"] == "failed" and states["failed"] == 1:
                print(f"first failure: {op['node']}: {op['error']}")
        on = sum(1 for s in sim.systems.values() if s.power_state == "On")
        latencies.sort()
        print(f"nodes: {args.nodes}, switch delay {args.switch_delay}s (simulated Redfish)")
        print(f"register {args.nodes} nodes through the API: {register:.2f} s "
              f"({args.nodes / register:.0f} nodes/s, sequential)")
        print(f"power-on requests: {requested:.2f} s for {args.nodes} "
              f"(median {statistics.median(latencies) * 1000:.1f} ms, "
              f"p95 {latencies[int(len(latencies) * 0.95) - 1] * 1000:.1f} ms per request)")
        print(f"all operations finished {converged:.2f} s after the first request; "
              f"{succeeded} succeeded ({states}); {on} systems on")
        await pserv.stopService()
        await sim.stop()
    finally:
        for stop in reactor_stops:
            await stop()


def main():
    from harness import run

    run(bench, parse())


if __name__ == "__main__":
    main()
