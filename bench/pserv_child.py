"""
The measured process of bench/rows.py, in a child of its own: either a
real pserv (``pserv``: :class:`PservService` built as ``twistd pserv``
builds it, connected to the bench's region) or the bare drivers
(``bare``: the same standard catalogue, each agent's driver called
directly with the same concurrency, no registry, region or database).

Reports JSON lines on stdout (``{"event": ..., "s": seconds, "rss_mb":
...}``) and, once its work is done, stops; a ``pserv`` without
``--sweeps`` serves until its stdin closes.

    python bench/pserv_child.py pserv --rpc tcp:host=127.0.0.1:port=N \\
        --secret-file F --cluster c [--expect 10000 --sweeps 2]
    python bench/pserv_child.py bare --agents agents.json --action query \\
        [--pdu] [--concurrency 32] [--rounds 2]
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # harness



def rss_mb():
    """(resident MB now, peak resident MB) of this process, from /proc."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, kb = line.split()[:2]
                values[key] = int(kb) / 1024
    return values.get("VmRSS:", 0.0), values.get("VmHWM:", 0.0)


#: Memory reporting (issue 14), by environment so bench/rows.py passes it on
#: untouched: every event line is also appended to this file, with the
#: process's role; with POWERCTL_BENCH_TRACEMALLOC=N (frames) each line also
#: carries the 12 files holding the most traced memory (tracemalloc's own
#: bookkeeping then inflates the RSS figures: use it to see where, not how much).
MEMLOG = os.environ.get("POWERCTL_BENCH_MEMLOG")
TRACE_FRAMES = int(os.environ.get("POWERCTL_BENCH_TRACEMALLOC") or 0)
ROLE = sys.argv[1] if len(sys.argv) > 1 else "?"
#: Options of the ``ipmi`` driver type (JSON), for bench/rows.py's ipmimem
#: row to run a pserv keeping every session beside one with the defaults.
IPMI_OPTIONS = os.environ.get("POWERCTL_BENCH_IPMI_OPTIONS")


def ipmi_options(options):
    """Every ``IpmiDriverType`` built in this process gets ``options``."""
    from powerctl.drivers import ipmi

    init = ipmi.IpmiDriverType.__init__

    def with_options(self, *args, **kwargs):
        init(self, *args, **dict(kwargs, **options))

    ipmi.IpmiDriverType.__init__ = with_options


_last_snapshot = []  # the previous line's snapshot, for the growth since


def traced_top(limit=12):
    """
    ``([[file, KiB], ...], [[file:line, KiB grown], ...])``: where traced
    memory lies now, by file, and where it grew since the previous line.
    """
    import tracemalloc

    def short(name):
        return name.rsplit("/site-packages/", 1)[-1].rsplit("/work/", 1)[-1]

    snapshot = tracemalloc.take_snapshot()
    stats = snapshot.statistics("filename")
    top = [[short(s.traceback[0].filename), round(s.size / 1024)] for s in stats[:limit]]
    grown = []
    if _last_snapshot:
        grown = [[f"{short(s.traceback[0].filename)}:{s.traceback[0].lineno}",
                  round(s.size_diff / 1024)]
                 for s in snapshot.compare_to(_last_snapshot[0], "lineno")[:limit]]
    _last_snapshot[:] = [snapshot]
    return top, grown


def say(event, **fields):
    rss, peak = rss_mb()
    line = json.dumps(dict(event=event, rss_mb=round(rss, 1), peak_mb=round(peak, 1),
                           **fields))
    print(line, flush=True)
    if MEMLOG:
        extra = {"role": ROLE, "pid": os.getpid()}
        if TRACE_FRAMES:
            import tracemalloc

            now, peak = tracemalloc.get_traced_memory()
            extra["traced_mb"] = round(now / 2**20, 1)
            extra["traced_peak_mb"] = round(peak / 2**20, 1)  # since the previous line
            tracemalloc.reset_peak()
            extra["top"], extra["grown"] = traced_top()
        with open(MEMLOG, "a") as f:
            f.write(json.dumps(dict(json.loads(line), **extra)) + "\n")


class Trace:
    """
    ``--trace``: what the drivers did in this process, the same way for the
    pserv and the bare drivers -- HTTP requests by method, verified changes
    (``on``/``off``) by duration, and how many were in flight on average
    (time-weighted) and at most -- so a row can tell fewer actions at once
    from slower actions.
    """

    def __init__(self, clock):
        self.clock = clock
        self.requests = {}
        self.durations = []
        self.in_flight = self.peak = 0
        self.area = 0.0
        self.first = self.last = None

    def _tick(self, delta):
        now = self.clock.seconds()
        if self.last is not None:
            self.area += self.in_flight * (now - self.last)
        if self.first is None:
            self.first = now
            self.cpu_first = time.process_time()
        self.cpu_last = time.process_time()
        self.last = now
        self.in_flight += delta
        self.peak = max(self.peak, self.in_flight)

    def install(self):
        from powerctl.drivers import base, redfish

        trace = self
        call = redfish.RedfishDriver._call

        async def counted(driver, method, *a, **kw):
            trace.requests[method] = trace.requests.get(method, 0) + 1
            return await call(driver, method, *a, **kw)

        redfish.RedfishDriver._call = counted
        change = base.VerifyingDriver._change

        async def timed(driver, command, want):
            start = trace.clock.seconds()
            trace._tick(1)
            try:
                return await change(driver, command, want)
            finally:
                trace._tick(-1)
                trace.durations.append(trace.clock.seconds() - start)

        base.VerifyingDriver._change = timed

    def summary(self):
        d = sorted(self.durations)

        def q(f):
            return round(d[min(len(d) - 1, int(f * len(d)))], 3) if d else 0.0

        span = (self.last - self.first) if self.first is not None else 0.0
        return {"requests": self.requests, "changes": len(d), "p50": q(0.5), "p90": q(0.9),
                "max": q(1.0), "mean_in_flight": round(self.area / span, 1) if span else 0.0,
                "peak_in_flight": self.peak, "span": round(span, 2),
                "first_at": self.first, "last_at": self.last,
                "cpu": round(self.cpu_last - self.cpu_first, 2) if d else 0.0}


def settings_from(args):
    from powerctl.config import PservConfig

    return PservConfig(name="bench-pserv", cluster=args.cluster, secret_file=args.secret_file,
                       poll_interval=3600, poll_concurrency=args.concurrency,
                       max_actions=args.max_actions, regions=(args.rpc,))


def catalogue_for(reactor, settings):
    """The catalogue ``PservService.from_config`` builds, for the bare drivers too."""
    from powerctl.drivers.bmclimit import BmcLimits
    from powerctl.drivers.standard import standard_catalogue

    return standard_catalogue(reactor, manual_timeout=settings.manual_timeout or None,
                              user_agent=f"powerctl-pserv/{settings.name}",
                              bmc_limits=BmcLimits(settings.bmc_max_sessions,
                                                   settings.bmc_min_interval))


async def until_eof(reactor):
    from twisted.internet import defer, stdio
    from twisted.internet.protocol import Protocol

    done = defer.Deferred()

    class Eof(Protocol):
        def connectionLost(self, reason):
            done.called or done.callback(None)

    stdio.StandardIO(Eof(), reactor=reactor)
    await done


async def run_pserv(reactor, args):
    from twisted.internet import task

    from powerctl.pserv.service import PservService

    settings = settings_from(args)
    trace = Trace(reactor) if args.trace else None
    if trace is not None:
        trace.install()
    service = PservService.from_config(settings, reactor)
    started = time.perf_counter()
    service.startService()
    say("started")
    try:
        if args.expect:
            # connected: recovery done (nodes are learnt during it, before)
            while (len(service.executor.known_nodes()) < args.expect
                   or not service.link.connected):
                if time.perf_counter() - started > args.timeout:
                    say("timeout", known=len(service.executor.known_nodes()))
                    return
                await task.deferLater(reactor, 0.05, lambda: None)
            say("known", s=time.perf_counter() - started)
        sent = {}
        send_states = service.link.send_states

        def counting(states, epoch):
            for s in states:
                sent[s["state"]] = sent.get(s["state"], 0) + 1
            return send_states(states, epoch)

        service.link.send_states = counting  # counts what each sweep reports
        for n in range(args.sweeps):
            sent.clear()
            t = time.perf_counter()
            await service.poller.poll_once()
            say("sweep", s=time.perf_counter() - t, n=n, states=dict(sent),
                epoch=service.link.epoch, connected=service.link.connected)
        if args.profile_sweep:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            await service.poller.poll_once()
            prof.disable()
            pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(15)
            pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(30)
        if not args.sweeps:
            prof = None
            if args.profile_sweep:  # serving: profile until the parent is done
                import cProfile

                prof = cProfile.Profile()
                prof.enable()
            await until_eof(reactor)
            if prof is not None:
                import pstats

                prof.disable()
                stats = pstats.Stats(prof, stream=sys.stderr)
                stats.sort_stats("tottime").print_stats(15)
                stats.sort_stats("cumulative").print_stats(30)
        say("end", **({"trace": trace.summary()} if trace is not None else {}))
    finally:
        await service.stopService()


async def run_bare(reactor, args):
    from twisted.internet import defer

    from powerctl.drivers.interface import perform

    settings = settings_from(args)
    trace = Trace(reactor) if args.trace else None
    if trace is not None:
        trace.install()
    catalogue = catalogue_for(reactor, settings)
    with open(args.agents) as f:
        agents = json.load(f)
    gate = defer.DeferredSemaphore(args.concurrency)
    if args.pdu:
        # what the poller does for single-outlet SNMP nodes: one read per PDU
        driver_type = catalogue.get("snmp")
        pdus = {}
        for agent in agents:
            s = catalogue.validate("snmp", agent["params"])
            key = json.dumps({k: v for k, v in s.items() if k != "outlet"}, sort_keys=True)
            pdus.setdefault(key, (s, []))[1].append(s["outlet"])
        jobs = [lambda s=s, o=o: driver_type.query_outlets(s, sorted(o))
                for s, o in pdus.values()]
    else:
        drivers = [catalogue.build(a["driver"], a["params"]) for a in agents]
        jobs = [lambda d=d: perform(d, args.action) for d in drivers]
    say("started")
    try:
        for n in range(args.rounds):
            t = time.perf_counter()
            results = await defer.DeferredList([gate.run(job) for job in jobs],
                                               consumeErrors=True)
            failed = [r for ok, r in results if not ok]
            say("round", s=time.perf_counter() - t, n=n, failed=len(failed),
                first_error=failed[0].getErrorMessage()[:200] if failed else "",
                **({"trace": trace.summary()} if trace is not None else {}))
    finally:
        await catalogue.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=("pserv", "bare"))
    p.add_argument("--rpc", default="tcp:host=127.0.0.1:port=5250")
    p.add_argument("--secret-file", default="/dev/null")
    p.add_argument("--cluster", default="c")
    p.add_argument("--concurrency", type=int, default=32, help="poll concurrency")
    p.add_argument("--max-actions", type=int, default=64)
    p.add_argument("--expect", type=int, default=0, help="nodes to learn before sweeping")
    p.add_argument("--sweeps", type=int, default=0)
    p.add_argument("--profile-sweep", action="store_true",
                   help="one more sweep (or, serving, everything until stdin closes) under "
                   "cProfile, top functions to stderr")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--agents", help="bare: JSON list of agents")
    p.add_argument("--action", default="query")
    p.add_argument("--pdu", action="store_true", help="bare: one read per PDU")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--trace", action="store_true",
                   help="count the drivers' HTTP requests and time their verified changes "
                   "(reported with the round, or the pserv's end)")
    p.add_argument("--log", help="append the process's log (twisted.logger) to this file")
    args = p.parse_args()
    if TRACE_FRAMES:
        import tracemalloc

        tracemalloc.start(TRACE_FRAMES)
    from twisted.logger import globalLogBeginner, textFileLogObserver

    # Logging begins as twistd begins it: without, Twisted buffers every
    # event (up to 65,536) for an observer that never comes, and a sweep's
    # connection messages then count as the process's memory (issue 14).
    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(open(args.log, "a")) if args.log else (lambda event: None)],
        redirectStandardIO=False)
    if IPMI_OPTIONS:
        ipmi_options(json.loads(IPMI_OPTIONS))
    from harness import run

    run(run_pserv if args.what == "pserv" else run_bare, args)


if __name__ == "__main__":
    main()
