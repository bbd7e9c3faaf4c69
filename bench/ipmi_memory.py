"""
What the ``ipmi`` driver's sessions cost in memory and CPU, before and after
a change, in one run.

The simulated BMCs run in a child process (``powerctl sim ipmi``); each
variant runs in a child process of its own (so its RSS is its own) that
binds one driver per BMC and polls them all ``--sweeps`` times, as the
pserv's poller does (``--concurrency`` queries at once), then reports, per
sweep: wall seconds, CPU seconds of the process and of the simulators,
RSS now and peak (VmHWM), and how many sessions the driver keeps.

Variants: ``base`` is the driver of another tree (``--base``, a git
revision, exported with ``git archive`` into a temporary directory), the
others are this tree's driver with options of :class:`IpmiDriverType`
(``--variant name='{"max_sessions": null}'``).  The default compares the
base with this tree's defaults.

    .venv/bin/python bench/ipmi_memory.py [--bmcs 2000] [--sweeps 2] [--base REV]
        [--variant now='{}'] [--gap 0] [--tracemalloc 8]

``--tracemalloc N`` adds, per sweep, the 12 source lines whose traced
memory grew most since the drivers were bound (tracemalloc inflates RSS: use it to see where, not how much).
Asserts nothing.
"""

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TREE = os.path.dirname(HERE)
USER, PASSWORD = "admin", "password"


def rss():
    # (As bench/pserv_child.py's rss_mb, not imported from it: that module
    # puts this checkout first on sys.path, and this script's children run
    # the tree they are given -- the base one too.)
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, kb = line.split()[:2]
                values[key] = int(kb) / 1024
    return round(values.get("VmRSS:", 0.0), 1), round(values.get("VmHWM:", 0.0), 1)


def cpu_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child(args):
    """One variant: bind, sweep, report JSON lines on stdout."""
    sys.path.insert(0, args.tree)
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start(args.tracemalloc)
    from powerctl.reactor import install

    install()
    from twisted.internet import defer, task
    from twisted.logger import globalLogBeginner

    globalLogBeginner.beginLoggingTo([lambda event: None], redirectStandardIO=False)

    def say(**fields):
        now, peak = rss()
        print(json.dumps(dict(fields, rss=now, peak=peak)), flush=True)

    first = []

    def top():
        """The 12 source lines whose traced memory grew most since binding."""
        import tracemalloc

        snapshot = tracemalloc.take_snapshot()
        if not first:
            first.append(snapshot)
            return []
        stats = snapshot.compare_to(first[0], "lineno")[:12]
        return [[f"{s.traceback[0].filename.rsplit('/', 2)[-1]}:{s.traceback[0].lineno}",
                 round(s.size_diff / 1024)] for s in stats]

    async def main(reactor):
        import powerctl.drivers.ipmi as ipmi
        from powerctl.drivers.interface import Timing

        options = json.loads(args.options)
        driver_type = ipmi.IpmiDriverType(reactor, timing=Timing(), **options)
        ports = json.loads(args.ports)
        drivers = [driver_type.bind(driver_type.schema.validate(
            {"host": "127.0.0.1", "port": p, "username": USER, "password": PASSWORD}))
            for p in ports]
        importlib.import_module("pyghmi.ipmi.command")  # imported before the first figure

        if args.tracemalloc:
            top()
        say(event="bound", bmcs=len(drivers), file=ipmi.__file__)
        gate = defer.DeferredSemaphore(args.concurrency)
        if args.sample:
            def sample():
                from pyghmi.ipmi.private import session

                print(json.dumps({"rss": rss()[0], "sessions": driver_type.sessions,
                                  "idle": len(driver_type.idle),
                                  "queued": driver_type.pool.q.qsize(),
                                  "pyghmi_handlers": len(session.Session.bmc_handlers),
                                  "keepalive": len(session.Session.keepalive_sessions)}),
                      file=sys.stderr, flush=True)

            task.LoopingCall(sample).start(args.sample, now=False)
        for n in range(args.sweeps):
            if n and args.gap:
                await task.deferLater(reactor, args.gap, lambda: None)
            t, c, s = time.monotonic(), time.process_time(), cpu_of(args.sim_pid)
            results = await defer.DeferredList([gate.run(d.query) for d in drivers],
                                               consumeErrors=True)
            failed = [r.getErrorMessage()[:120] for ok, r in results if not ok]
            say(event="sweep", n=n, s=round(time.monotonic() - t, 2),
                cpu=round(time.process_time() - c, 2),
                sim_cpu=round(cpu_of(args.sim_pid) - s, 2), failed=len(failed),
                first_error=failed[0] if failed else "", sessions=driver_type.sessions,
                **({"top": top()} if args.tracemalloc else {}))
        if args.trim:
            import ctypes
            import gc

            gc.collect()
            say(event="collected")
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            say(event="trimmed")
        await driver_type.close()

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))


def export(rev):
    """``rev``'s ``powerctl`` package in a temporary directory (its path)."""
    where = tempfile.mkdtemp(prefix="ipmi-memory-base-")
    archive = subprocess.run(["git", "-C", TREE, "archive", rev, "powerctl"],
                             check=True, stdout=subprocess.PIPE).stdout
    subprocess.run(["tar", "-x", "-C", where], input=archive, check=True)
    return where


def run_variant(name, tree, options, ports, sim, args):
    argv = [sys.executable, os.path.abspath(__file__), "--child", "--tree", tree,
            "--options", json.dumps(options), "--ports", json.dumps(ports),
            "--sim-pid", str(sim.pid), "--sweeps", str(args.sweeps),
            "--concurrency", str(args.concurrency), "--gap", str(args.gap),
            "--tracemalloc", str(args.tracemalloc), "--sample", str(args.sample), *(("--trim",) if args.trim else ())]
    env = dict(os.environ, PYTHONPATH=tree)
    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, env=env,
                          timeout=args.timeout)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise SystemExit(f"{name}: exit {done.returncode}")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--bmcs", type=int, default=2000)
    p.add_argument("--sweeps", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--latency", type=float, default=0.002)
    p.add_argument("--gap", type=float, default=0.0,
                   help="seconds between sweeps (the pserv's poll interval is 60)")
    p.add_argument("--base", default="wip-after-af9f97c",
                   help="git revision of the 'base' variant ('' for none)")
    p.add_argument("--variant", action="append", default=[],
                   help="name=JSON options of IpmiDriverType (this tree)")
    p.add_argument("--tracemalloc", type=int, default=0)
    p.add_argument("--trim", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sample", type=float, default=0,
                   help="every so many seconds, the sessions kept, work queued and RSS"
                   " (on stderr)")
    p.add_argument("--timeout", type=float, default=170)
    p.add_argument("--json", action="store_true", help="one JSON line per sweep")
    # child side
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tree", default=TREE, help=argparse.SUPPRESS)
    p.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--ports", default="[]", help=argparse.SUPPRESS)
    p.add_argument("--sim-pid", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    variants = []
    base = export(args.base) if args.base else None
    if base:
        variants.append(("base", base, {}))
    for v in args.variant or ["now={}"]:
        name, _, options = v.partition("=")
        variants.append((name, TREE, json.loads(options or "{}")))
    sim = subprocess.Popen(
        [sys.executable, "-m", "powerctl.cli.main", "sim", "ipmi", "--json",
         "--count", str(args.bmcs), "--latency", str(args.latency),
         "--username", USER, "--password", PASSWORD],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=TREE))
    started = time.monotonic()
    try:
        ports = json.loads(sim.stdout.readline())["ports"]
        load = os.getloadavg()[0]
        results = {}
        for name, tree, options in variants:
            results[name] = run_variant(name, tree, options, ports, sim, args)
    finally:
        sim.terminate()
        sim.wait(10)
        if base:
            subprocess.run(["rm", "-rf", base])
    print(f"{args.bmcs} simulated BMCs ({args.latency * 1000:g} ms latency), "
          f"{args.sweeps} sweeps, concurrency {args.concurrency}, gap {args.gap:g} s; "
          f"load {load:.2f} -> {os.getloadavg()[0]:.2f}; {time.monotonic() - started:.0f} s")
    print(f"{'variant':10} {'bound MB':>8} {'sweep':>5} {'wall s':>7} {'CPU s':>6} "
          f"{'sim CPU':>7} {'RSS MB':>7} {'peak MB':>7} {'sessions':>8} failed")
    for name, lines in results.items():
        for x in lines:
            if x["event"] in ("collected", "trimmed"):
                print(f"{name}: {x['event']}: RSS {x['rss']} MB")
        bound = lines[0]
        for s in [x for x in lines[1:] if x["event"] == "sweep"]:
            if args.json:
                print(json.dumps(dict(s, variant=name, bound=bound["rss"])))
                continue
            print(f"{name:10} {bound['rss']:8.1f} {s['n']:5d} {s['s']:7.2f} {s['cpu']:6.2f} "
                  f"{s['sim_cpu']:7.2f} {s['rss']:7.1f} {s['peak']:7.1f} {s['sessions']:8d} "
                  f"{s['failed']} {s['first_error']}")
            if s.get("top"):
                print("    top: " + ", ".join(f"{w} {k} KiB" for w, k in s["top"]))


if __name__ == "__main__":
    main()
