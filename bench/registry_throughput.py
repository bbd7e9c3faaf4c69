"""
Registry throughput and memory, no I/O: how many power requests per second
the per-node rules decide, and what the registry holds per busy node.

    .venv/bin/python bench/registry_throughput.py [--nodes 10000] [--rounds 5]

Prints figures; asserts nothing.
"""

import argparse
import random
import time
import tracemalloc

from twisted.internet import defer, task
from zope.interface import implementer

from powerctl.power import Action, PowerState
from powerctl.registry import IActionExecutor, PowerAction, PowerActionRegistry


@implementer(IActionExecutor)
class HeldExecutor:
    """Holds every execution open until told to finish them all."""

    def __init__(self):
        self.running = []

    def execute(self, action):
        d = defer.Deferred(lambda d: None)
        self.running.append(d)
        return d

    def quiesced(self, action):
        return defer.succeed(None)

    def finish_all(self):
        running, self.running = self.running, []
        for d in running:
            if not d.called:
                d.callback(PowerState.ON)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    actions = [Action.ON, Action.OFF, Action.SOFT_OFF, Action.CYCLE, Action.QUERY]
    op = [0]

    def round_(registry, executor):
        for n in range(args.nodes):
            for _ in range(3):  # three requests per node: run, then wait/join/supersede
                op[0] += 1
                a = PowerAction(node=f"node{n}", action=rng.choice(actions),
                                operation_id=str(op[0]))
                registry.submit(a).addErrback(lambda f: None)
        busy = len(registry.activity())
        return busy

    def drain(executor):
        while executor.running:
            executor.finish_all()

    clock = task.Clock()
    executor = HeldExecutor()
    registry = PowerActionRegistry(executor, clock)
    t0 = time.perf_counter()
    for _ in range(args.rounds):
        round_(registry, executor)
        drain(executor)
    elapsed = time.perf_counter() - t0
    submitted = op[0]
    print(f"requests: {submitted:,} over {args.nodes:,} nodes, {args.rounds} rounds of 3 per node")
    print(f"decided and completed in {elapsed:.2f} s: {submitted / elapsed:,.0f} requests/s "
          f"({elapsed / submitted * 1e6:.1f} µs per request)")

    # Memory, in a separate round (tracemalloc slows everything down).
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    busy = round_(registry, executor)
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    drain(executor)
    print(f"busy nodes: {busy:,}; memory held: {held / 1e6:.1f} MB "
          f"({held / max(busy, 1):,.0f} bytes per busy node with 3 requests)")
    print(f"nodes left in the registry after completion: {len(registry.activity())}")


if __name__ == "__main__":
    main()
