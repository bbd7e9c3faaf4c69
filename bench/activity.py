"""
How long the region takes to say what runs now, for a pserv with 10,000
busy nodes: a real ``PowerActionRegistry`` whose executor never finishes
(every node has an action running -- most of them waiting for one of the
pserv's priority slots --, one waiting behind it and one joined to it),
the pserv's real AMP responders (``ListActions``/``ListSlots``) over a TCP
connection on 127.0.0.1, and the region's collection
(:class:`powerctl.region.activity.LiveActivity`), then the whole
``GET /v1/activity`` through twisted.web and an HTTP client.

By default the pserv runs in a child process, as in production (the region
and the pserv are separate processes, so each one's garbage collector only
walks its own heap); ``--same-process`` puts both in this process, the
worst case (a full collection then walks the pserv's half-million objects
while the region shapes its answer).

    .venv/bin/python bench/activity.py [--nodes 10000] [--slots 16] [--rounds 5]
                                       [--same-process]

Prints figures; asserts nothing.
"""

import argparse
import json
import os
import subprocess
import sys
import time

from powerctl.reactor import install

install()

import treq  # noqa: E402
from twisted.internet import defer, endpoints, protocol, reactor, task, threads  # noqa: E402
from twisted.protocols import amp  # noqa: E402
from twisted.web.client import Agent, HTTPConnectionPool  # noqa: E402
from twisted.web.server import Site  # noqa: E402
from zope.interface import implementer  # noqa: E402

from powerctl.pserv.link import PservProtocol, RegionLink  # noqa: E402
from powerctl.pserv.slots import PrioritySlots, priority_of  # noqa: E402
from powerctl.region.activity import LiveActivity  # noqa: E402
from powerctl.region.api import api_root  # noqa: E402
from powerctl.region.auth import Principal  # noqa: E402
from powerctl.region.guard import ApiGuard  # noqa: E402
from powerctl.registry import IActionExecutor, PowerAction, PowerActionRegistry  # noqa: E402
from powerctl.testing.tokens import FakeTokens  # noqa: E402


@implementer(IActionExecutor)
class StuckExecutor:
    """Every execution takes a priority slot and then never finishes."""

    def __init__(self, slots):
        self.slots = slots

    def execute(self, action):
        return self.slots.run(
            priority_of(action.action), lambda: defer.Deferred(lambda d: None),
            info={"node": action.node, "operation_id": action.operation_id,
                  "action": action.action.value})

    def quiesced(self, action):
        return defer.succeed(None)


class PservSide:
    """What ``PservProtocol`` reads: ``.registry`` and ``.executor``."""

    def __init__(self, registry, executor):
        self.registry = registry
        self.executor = executor


class QuietPserv(PservProtocol):
    """The pserv's responders, without the hand-shake (we play the region)."""

    def connectionMade(self):
        amp.AMP.connectionMade(self)
        self.gate.open = True


class RegionSide(amp.AMP):
    pserv = "bench-pserv"
    cluster = "bench"


class OneNode:
    """The API looks a node up for ``?node=``; nothing else is read here."""

    async def get(self, name):
        return {"name": name, "cluster": "bench"}


class OneNodeStore:
    nodes = OneNode()


def busy_registry(nodes, size):
    slots = PrioritySlots(size, reactor)
    registry = PowerActionRegistry(StuckExecutor(slots), reactor)
    op = 0
    for n in range(nodes):
        node = f"node{n:05d}"
        for action in ("cycle", "cycle", "on"):  # runs, joins it, waits behind it
            op += 1
            registry.submit(PowerAction(node=node, action=action, operation_id=str(op))) \
                .addErrback(lambda f: None)
    return registry, slots


def process_cpu(pid):
    """CPU seconds (user + system) used so far by process ``pid`` (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None



_BENCH_TOKEN = "pct_bench"


async def timed(label, rounds, fn, pserv_pid=None):
    """Wall time of ``fn()``, and the CPU time of this process and of the pserv's."""
    times, region_cpu, pserv_cpu = [], [], []
    result = None
    for _ in range(rounds):
        start, cpu = time.perf_counter(), time.process_time()
        other = process_cpu(pserv_pid) if pserv_pid else None
        result = await fn()
        times.append(time.perf_counter() - start)
        region_cpu.append(time.process_time() - cpu)
        if other is not None:
            pserv_cpu.append(process_cpu(pserv_pid) - other)

    def median(values):
        return sorted(values)[len(values) // 2] * 1000

    times.sort()
    cpu = f"; CPU median: this process {median(region_cpu):.0f} ms"
    if pserv_cpu:
        cpu += f", pserv process {median(pserv_cpu):.0f} ms"
    print(f"{label}: wall best {times[0] * 1000:.0f} ms, median {median(times):.0f} ms, "
          f"worst {times[-1] * 1000:.0f} ms over {rounds} rounds{cpu}")
    return result


async def serve_pserv(args):
    """Build the busy registry and serve its responders on 127.0.0.1."""
    start = time.perf_counter()
    registry, slots = busy_registry(args.nodes, args.slots)
    note = (f"{args.nodes} busy nodes in the registry ({time.perf_counter() - start:.1f} s to "
            f"submit); slots {slots.busy}/{slots.size} busy, {slots.waiting} waiting for one")
    factory = protocol.Factory.forProtocol(
        lambda: QuietPserv(PservSide(registry, registry._executor), RegionLink(), None, b"",
                           reactor))
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    return registry, port, note


async def child(args):
    """``--serve``: the pserv half, in its own process, until stdin closes."""
    registry, port, note = await serve_pserv(args)
    print(port.getHost().port, note, flush=True)
    closed = defer.Deferred()
    reactor.addReader(_StdinWatch(closed))
    await closed
    registry.cancel_all("bench over")


class _StdinWatch:
    def __init__(self, closed):
        self.closed = closed

    def fileno(self):
        return sys.stdin.fileno()

    def doRead(self):
        if not sys.stdin.buffer.raw.read(1024):
            reactor.removeReader(self)
            self.closed.callback(None)

    def connectionLost(self, reason):
        pass

    def logPrefix(self):
        return "stdin"


async def main(args):
    if args.same_process:
        registry, port, note = await serve_pserv(args)
        pserv_port, pid = port.getHost().port, None
        print(note + " (same process)")
    else:
        registry = port = None
        kid = subprocess.Popen(
            [sys.executable, __file__, "--serve", "--nodes", str(args.nodes),
             "--slots", str(args.slots)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True)
        line = await threads.deferToThread(kid.stdout.readline)
        pserv_port, _, note = line.strip().partition(" ")
        pserv_port, pid = int(pserv_port), kid.pid
        print(note + " (pserv in a child process)")

    client = await endpoints.connectProtocol(
        endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", pserv_port), RegionSide())
    live = LiveActivity(lambda: [client], reactor, timeout=30.0)

    doc = await timed("collection over AMP (ListActions + ListSlots, all pages)", args.rounds,
                      live, pid)
    totals = doc["totals"]
    print(f"  -> {totals['nodes']} nodes, {totals['running']} running, {totals['waiting']} "
          f"waiting, {totals['joined']} joined, {totals['slot_waiting']} waiting for a slot; "
          f"errors {totals['errors']}")
    node = f"node{args.nodes // 2:05d}"
    one = await timed(f"collection of one node (?node={node})", args.rounds,
                      lambda: live(node=node), pid)
    print(f"  -> {json.dumps(one['pservs'][0]['nodes'][0]['running'])}")

    root = api_root(OneNodeStore(), None, live_activity=live,
                    guard=ApiGuard(FakeTokens({_BENCH_TOKEN: Principal("bench", "viewer")}),
                                   reactor))
    site = Site(root)
    site.noisy = False
    web = reactor.listenTCP(0, site, interface="127.0.0.1")
    pool = HTTPConnectionPool(reactor, persistent=True)
    http = treq.client.HTTPClient(Agent(reactor, pool=pool))
    url = f"http://127.0.0.1:{web.getHost().port}/v1/activity"

    async def get():
        response = await http.get(url, headers={"Authorization": [f"Bearer {_BENCH_TOKEN}"]})
        body = await response.content()
        assert response.code == 200, body[:200]
        return body

    body = await timed("GET /v1/activity end to end (HTTP, JSON)", args.rounds, get, pid)
    print(f"  -> {len(body) / 1e6:.1f} MB of JSON")
    await pool.closeCachedConnections()
    await web.stopListening()
    client.transport.loseConnection()
    if args.same_process:
        await port.stopListening()
        registry.cancel_all("bench over")
    else:
        kid.stdin.close()
        await threads.deferToThread(kid.wait)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--same-process", action="store_true",
                        help="run the pserv in this process too (worst case)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()

    def run(_reactor):
        return defer.ensureDeferred((child if options.serve else main)(options))

    task.react(run)
    sys.exit(0)
