"""
The pserv rows of issue 14's table, each beside the bare driver measured
in the same run where the issue defines one.  A private PostgreSQL and the
region run in this process; the pserv runs in a child process
(bench/pserv_child.py, built as ``twistd pserv`` builds it) and so does
the bare-driver baseline (the same catalogue, the drivers called directly,
same simulators, same concurrency); the simulators run in a third process
(bench/simhost.py, ``powerctl sim ipmi``).  Loopback only.

* ``snmp``: one poll sweep of ``--pdus`` x ``--outlets`` SNMP outlets
  (target <= 3 s); baseline: one read per PDU with the same concurrency;
  the PDUs are bench/simhost.py's light agents unless ``--snmp-sim pysnmp``;
* ``redfish``: one poll sweep of ``--redfish`` Redfish systems
  (``--services`` simulated services), the first (with the drivers'
  discovery and logins) and the next (targets <= 15 s, <= 8 s);
* pserv resident memory after those sweeps and after the IPMI power-on
  (target <= 100 MB in every mix);
* ``replay``: ``--replay`` power-on operations journalled while no pserv
  runs, then a pserv starts: start to last outcome, against the bare
  driver doing the same actions on as many other systems (target >= 0.8);
* ``ipmi``: ``POST /v1/power`` of ``--ipmi`` simulated IPMI nodes, request
  to last outcome, against the bare driver (target >= 0.9).  1,000 by
  default, not the issue's 5,000: that size alone outlasts make bench's
  10 minutes on a 2-core machine (the figure's name says so);
* ``ipmimem``: pserv resident memory (peak) after one poll sweep of
  ``--ipmi-sweep`` (10,000) simulated IPMI BMCs, one node each (target
  <= 100 MB), beside the bare drivers' peak after the same sweep; the
  note gives both sweeps' wall and CPU seconds.  ``--ipmi-keep-all`` adds
  a pserv whose driver keeps every session (``max_sessions`` None, no idle
  bound: what the driver did before it bounded them), for a before/after
  in one run (not in make bench: one more sweep of 10,000).

    .venv/bin/python bench/rows.py [--only snmp,redfish,replay,ipmi] [--json] [--logs DIR]
        [--trace]

Prints the table (or, with ``--json``, one JSON row per line for
bench/table.py); asserts nothing.  Every wait is bounded by ``--timeout``.
``--logs DIR`` keeps the region's and the pserv's logs (``region.log``,
``pserv.log``); the IPMI row also lists the errors of the operations that
did not succeed.  ``--trace`` (replay, ipmi) adds, for the bare driver and
the pserv alike, the drivers' HTTP requests by method, the verified
changes' durations and how many ran at once, and when the pserv's first
change started and its last outcome was recorded: fewer actions at once,
slower actions, late dispatch or late reports tell apart.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


ROWS = ("snmp", "redfish", "replay", "ipmi", "ipmimem")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(ROWS))
    p.add_argument("--pdus", type=int, default=200)
    p.add_argument("--outlets", type=int, default=50)
    p.add_argument("--redfish", type=int, default=10_000)
    p.add_argument("--services", type=int, default=100)
    p.add_argument("--replay", type=int, default=1000)
    p.add_argument("--switch-delay", type=float, default=0.2,
                   help="Redfish simulators' switching time (replay row)")
    # The 5,000: about 35 s each for the bare drivers and the
    # pserv, 110 s for the row with its set-up (RESULTS.md, 2026-12-05)
    p.add_argument("--ipmi", type=int, default=5000)
    p.add_argument("--ipmi-latency", type=float, default=0.002)
    p.add_argument("--ipmi-sweep", type=int, default=10_000,
                   help="ipmimem row: simulated BMCs swept once")
    p.add_argument("--ipmi-keep-all", action="store_true",
                   help="ipmimem row: also a pserv whose driver keeps every session")
    p.add_argument("--ipmi-pserv", action="append", default=[], metavar="NAME=JSON",
                   help="ipmimem row: also a pserv whose ipmi driver type has these options,"
                   " e.g. k0='{\"max_sessions\": 0}' (repeatable)")
    p.add_argument("--snmp-sim", choices=("light", "pysnmp"), default="light",
                   help="snmp row: the PDUs' agent (bench/simhost.py: pysnmp's agent became"
                   " the bottleneck once the driver stopped using pysnmp for polls)")
    p.add_argument("--concurrency", type=int, default=32, help="poll concurrency")
    p.add_argument("--max-actions", type=int, default=64)
    p.add_argument("--profile", action="store_true",
                   help="a further sweep under cProfile (top functions on stderr)")
    p.add_argument("--timeout", type=float, default=240)
    p.add_argument("--trace", action="store_true",
                   help="replay, ipmi: the drivers' HTTP requests and verified changes (durations,"
                   " how many at once) in the bare driver and the pserv, in the row's note")
    p.add_argument("--json", action="store_true")
    p.add_argument("--logs", help="a directory: the region's and the pserv's logs go there"
                   " (region.log, pserv.log), for looking into a row")
    return p.parse_args(argv)


class Child:
    """A child process announcing itself in JSON lines; read without blocking the reactor."""

    def __init__(self, argv, stdin=True, env=None):
        self.proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE,
                                     stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                     text=True, env=dict(os.environ, **env) if env else None)

    async def line(self, timeout):
        from twisted.internet import reactor, threads

        d = threads.deferToThread(self.proc.stdout.readline)
        d.addTimeout(timeout, reactor)
        text = await d
        if not text:
            raise RuntimeError(f"{self.proc.args[1]} ended (exit {self.proc.wait()})")
        return json.loads(text)

    async def until(self, event, timeout):
        while True:
            got = await self.line(timeout)
            if got.get("event", event) == event:
                return got
            if got.get("event") == "timeout":
                raise RuntimeError(f"child timed out: {got}")

    def cpu_s(self):
        """CPU seconds (user + system) the child has used so far."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def events(self, event, count, timeout, peer=None):
        """
        The next ``count`` ``event`` lines, each with the CPU seconds the
        child used since the previous one (``cpu``), and ``peer``'s (another
        Child, the simulators: ``peer_cpu``): on a shared machine wall-clock
        seconds swing with the load, CPU seconds much less.
        """
        got, before = [], (self.cpu_s(), peer.cpu_s() if peer else 0.0)
        for _ in range(count):
            line = await self.until(event, timeout)
            now = (self.cpu_s(), peer.cpu_s() if peer else 0.0)
            got.append(dict(line, cpu=now[0] - before[0], peer_cpu=now[1] - before[1]))
            before = now
        return got

    def rss_mb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def close(self):
        if self.proc.poll() is None:
            if self.proc.stdin:
                self.proc.stdin.close()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def pserv_argv(harness, args, *extra):
    return [os.path.join(HERE, "pserv_child.py"), "pserv", "--rpc", harness.rpc,
            "--secret-file", harness.secret_file, "--cluster", "c",
            "--concurrency", str(args.concurrency), "--max-actions", str(args.max_actions),
            "--timeout", str(args.timeout),
            *(("--log", os.path.join(args.logs, "pserv.log")) if args.logs else ()), *extra]


def bare_argv(agents_file, args, *extra):
    return [os.path.join(HERE, "pserv_child.py"), "bare", "--agents", agents_file, *extra]


def insert_nodes(harness, agents):
    """Nodes n000000.. of cluster ``c``, one agent each, secrets sealed as the API seals them."""
    import psycopg2
    from psycopg2.extras import execute_values

    from powerctl.drivers.standard import standard_catalogue
    from powerctl.region.vault import load_key_file
    from twisted.internet import reactor

    vault = load_key_file(harness.secret_file + ".key")
    catalogue = standard_catalogue(reactor)
    sealed = {}
    rows = []
    for i, agent in enumerate(agents):
        # the same secrets throughout: seal once per distinct secret set
        secrets = json.dumps(sorted((k, v) for k, v in agent["params"].items()
                                    if k in ("password", "community")))
        if secrets not in sealed:
            sealed[secrets] = vault.seal_power({"mode": "single", "agents": [agent]}, None,
                                               catalogue)["agents"][0]["params"]
        params = dict(agent["params"])
        params.update({k: v for k, v in sealed[secrets].items()
                       if k in ("password", "community")})
        power = {"mode": "single", "agents": [{"driver": agent["driver"], "params": params}]}
        rows.append((f"n{i:06d}", "c", json.dumps(power)))
    conn = psycopg2.connect(harness.dsn)
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO clusters (name) VALUES ('c') ON CONFLICT DO NOTHING")
        execute_values(cur, "INSERT INTO nodes (name, cluster, power) VALUES %s", rows,
                       template="(%s, %s, %s::jsonb)", page_size=1000)
    conn.close()
    return [r[0] for r in rows]


def write_agents(agents):
    fd, path = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(agents, f)
    return path


async def open_ops(conn, ids):
    """
    (operations still open, succeeded, seconds since the epoch of the last
    finish, and of the last start: how long the region took to hand out
    the last operation), read on ``conn`` (one psycopg2 connection kept for
    the whole wait: a connection per look, five a second, cost PostgreSQL a
    backend each while the pserv ran and the bare driver did not).
    """
    from twisted.internet import threads

    def read():
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FILTER (WHERE state IN ('pending', 'running')),"
                        " count(*) FILTER (WHERE state = 'succeeded'),"
                        " extract(epoch FROM max(finished_at)),"
                        " extract(epoch FROM max(started_at))"
                        " FROM power_ops WHERE id = ANY(%s)", (list(ids),))
            return cur.fetchone()

    return await threads.deferToThread(read)


async def ended_otherwise(harness, ids):
    """``{(state, error's first 80 characters): count}`` of the operations that did not succeed."""
    import psycopg2
    from twisted.internet import threads

    def read():
        conn = psycopg2.connect(harness.dsn)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT state, left(coalesce(error, ''), 80), count(*)"
                            " FROM power_ops WHERE id = ANY(%s) AND state <> 'succeeded'"
                            " GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 8", (list(ids),))
                return {f"{s}: {e}": n for s, e, n in cur.fetchall()}
        finally:
            conn.close()

    return await threads.deferToThread(read)


async def wait_ops(harness, ids, timeout):
    import psycopg2
    from twisted.internet import reactor, task

    conn = psycopg2.connect(harness.dsn)
    conn.autocommit = True  # every look sees the latest commits
    try:
        deadline = time.monotonic() + timeout
        while True:
            pending, ok, last, last_start = await open_ops(conn, ids)
            if not pending or time.monotonic() > deadline:
                return pending, ok, float(last or 0), float(last_start or 0)
            # Once a second: the figure is the journal's own last
            # finished_at, not when this loop saw it, and each look is a
            # count over every id (about 11 ms of PostgreSQL at 5,000 ids;
            # five a second were 2 s of the database's CPU beside the pserv)
            await task.deferLater(reactor, 1.0, lambda: None)
    finally:
        conn.close()


def lag(started, traced, last):
    """
    Where a row's time went besides the drivers' work (``--trace``): from
    the start (request, or the pserv's start) to the pserv's first verified
    change, and from its last change's end to the last ``finished_at``.
    """
    if not traced or traced.get("first_at") is None:
        return "no change traced"
    return (f"first change {traced['first_at'] - started:.2f} s after the start, last outcome "
            f"recorded {last - traced['last_at']:.2f} s after the last change ended")


def states(sweep):
    """What a sweep reported, e.g. ``; reported {'on': 10000}``."""
    return f"; reported {sweep.get('states')}"


def row(name, baseline, value, ratio, target, ok, note=""):
    return {"figure": name, "baseline": baseline, "value": value, "ratio": ratio,
            "target": target, "ok": ok, "note": note}


async def sweep_rows(reactor, args, kind):
    from harness import RegionHarness

    profile = ("--profile-sweep",) if args.profile else ()
    if kind == "snmp":
        sim = Child([os.path.join(HERE, "simhost.py"), "snmp", "--pdus", str(args.pdus),
                     "--outlets", str(args.outlets),
                     *(("--light",) if args.snmp_sim == "light" else ())])
        count = args.pdus * args.outlets
    else:
        per = max(1, args.redfish // args.services)
        sim = Child([os.path.join(HERE, "simhost.py"), "redfish", "--services",
                     str(args.services), "--systems", str(per)])
        count = args.services * per
    harness = None
    files = []
    try:
        info = await sim.line(120)
        if kind == "snmp":
            agents = [{"driver": "snmp", "params": {
                "host": "127.0.0.1", "port": port, "family": "apc-rpdu", "outlet": o,
                "community": "public"}}
                for port in info["ports"] for o in range(1, args.outlets + 1)]
        else:
            agents = [{"driver": "redfish", "params": {
                "url": url, "username": "u", "password": "p", "system": f"s-id-{s}"}}
                for url in info["urls"] for s in range(1, per + 1)]
        files.append(write_agents(agents))
        bare = Child(bare_argv(files[0], args, "--action", "query", "--rounds", "2",
                               "--concurrency", str(args.concurrency),
                               *(("--pdu",) if kind == "snmp" else ())))
        try:
            await bare.until("started", 60)
            base = await bare.events("round", 2, args.timeout, peer=sim)
        finally:
            bare.close()
        harness = await RegionHarness.start(reactor)
        insert_nodes(harness, agents)
        pserv = Child(pserv_argv(harness, args, "--expect", str(count), "--sweeps", "2",
                                 *profile))
        try:
            await pserv.until("started", 60)
            known = await pserv.until("known", args.timeout)
            sweeps = await pserv.events("sweep", 2, args.timeout, peer=sim)
            end = await pserv.until("end", args.timeout)
        finally:
            pserv.close()
    finally:
        sim.close()
        if harness is not None:
            await harness.close()
        for f in files:
            os.unlink(f)
    failed = f"; bare failures {base[0]['failed']}/{base[1]['failed']}" \
        + (f" ({base[0]['first_error']})" if base[0]["failed"] else "")
    note = f"pserv learnt {count} nodes in {known['s']:.1f} s{failed}"
    if kind == "snmp":
        note += (f"; {info.get('sim', 'pysnmp')} PDU agents; first sweep {sweeps[0]['s']:.2f} s"
                 " (with the round's full refresh; the next one is not due then)")
    out = []
    if kind == "snmp":
        name = f"SNMP sweep s, {args.pdus} PDUs x {args.outlets} ({count})"
        v, b = sweeps[1]["s"], base[1]["s"]
        out.append(row(name, b, v, b / v, "<= 3 s", v <= 3.0, note + states(sweeps[1])))
    else:
        cpu = [f"; CPU s bare {b['cpu']:.2f} (simulators {b['peer_cpu']:.2f}), pserv "
               f"{p['cpu']:.2f} (simulators {p['peer_cpu']:.2f})" for b, p in zip(base, sweeps)]
        name = f"Redfish sweep s, first, {count} systems"
        v, b = sweeps[0]["s"], base[0]["s"]
        out.append(row(name, b, v, b / v, "<= 15 s", v <= 15.0,
                       note + states(sweeps[0]) + cpu[0]))
        name = f"Redfish sweep s, next, {count} systems"
        v, b = sweeps[1]["s"], base[1]["s"]
        out.append(row(name, b, v, b / v, "<= 8 s", v <= 8.0, states(sweeps[1])[2:] + cpu[1]))
    peak = end["peak_mb"]
    out.append(row(f"pserv RSS MB, {count} {kind} nodes (peak)", base[1]["peak_mb"], peak,
                   base[1]["peak_mb"] / peak, "<= 100 MB", peak <= 100.0,
                   f"after 2 sweeps; now {end['rss_mb']:.0f} MB; baseline: bare drivers"))
    return out


async def replay_row(reactor, args):
    from harness import RegionHarness

    n = args.replay
    services = max(1, min(args.services, n // 10))
    per = -(-2 * n // services)
    sim = Child([os.path.join(HERE, "simhost.py"), "redfish", "--services", str(services),
                 "--systems", str(per), "--delay", str(args.switch_delay)])
    harness = None
    files = []
    try:
        info = await sim.line(120)
        agents = [{"driver": "redfish", "params": {
            "url": url, "username": "u", "password": "p", "system": f"s-id-{s}"}}
            for url in info["urls"] for s in range(1, per + 1)]
        # the pserv drives every other system, the bare driver the rest
        mine, theirs = agents[0::2][:n], agents[1::2][:n]
        files.append(write_agents(theirs))
        bare = Child(bare_argv(files[0], args, "--action", "on",
                               "--concurrency", str(args.max_actions),
                               *(("--trace",) if args.trace else ())))
        try:
            await bare.until("started", 60)
            cpu = (sim.cpu_s(), time.process_time())
            base = await bare.until("round", args.timeout)
            cpu_bare = (sim.cpu_s() - cpu[0], time.process_time() - cpu[1])
        finally:
            bare.close()
        harness = await RegionHarness.start(reactor)
        names = insert_nodes(harness, mine)
        call = harness.client()
        code, body = await call("POST", "/v1/power", {"nodes": names, "action": "on"})
        if code != 202:
            raise RuntimeError(f"POST /v1/power: {code} {body}")
        ids = [op["id"] for op in body["operations"]] if "operations" in body else body["ids"]
        pserv = Child(pserv_argv(harness, args,
                                 *(("--profile-sweep",) if args.profile else ()),
                                 *(("--trace",) if args.trace else ())))
        try:
            started = (await pserv.until("started", 60), time.time())[1]
            cpu = (sim.cpu_s(), time.process_time())
            pending, ok, last, last_start = await wait_ops(harness, ids, args.timeout)
            cpu_pserv = (sim.cpu_s() - cpu[0], time.process_time() - cpu[1])
            rss = pserv.rss_mb()
            if args.trace:
                pserv.proc.stdin.close()
                traced = (await pserv.until("end", 60)).get("trace")
        finally:
            pserv.close()
    finally:
        sim.close()
        if harness is not None:
            await harness.close()
        for f in files:
            os.unlink(f)
    took = last - started
    ratio = base["s"] / took if took > 0 else 0.0
    return [row(f"replay of {n} open ops after restart s (Redfish, {args.switch_delay:g} s"
                " switch)", base["s"], took, ratio, ">= 0.8 x", ratio >= 0.8 and not pending,
                f"{ok} succeeded, {pending} still open; last one started after "
                f"{last_start - started:.1f} s; pserv RSS {rss:.0f} MB; "
                f"bare failures {base['failed']}; CPU s of the simulators {cpu_bare[0]:.1f} "
                f"(bare) / {cpu_pserv[0]:.1f} (pserv), of this process (region, PostgreSQL "
                f"client) {cpu_bare[1]:.1f} / {cpu_pserv[1]:.1f}"
                + (f"; trace: bare {base.get('trace')}, pserv {traced}; "
                   + lag(started, traced, last) if args.trace else ""))]


async def ipmi_row(reactor, args):
    from harness import RegionHarness

    n = args.ipmi
    sim = _ipmi_sims(n, args)
    harness = None
    files = []
    try:
        info = await sim.line(120)
        agents = _ipmi_agents(info["ports"])
        files.append(write_agents(agents))
        bare = Child(bare_argv(files[0], args, "--action", "on",
                               "--concurrency", str(args.max_actions),
                               *(("--trace",) if args.trace else ())))
        try:
            await bare.until("started", 60)
            base = await bare.until("round", args.timeout)
        finally:
            bare.close()
        # switch them off again (not timed) for the pserv's turn
        reset = Child(bare_argv(files[0], args, "--action", "off",
                                "--concurrency", str(args.max_actions)))
        try:
            await reset.until("round", args.timeout)
        finally:
            reset.close()
        harness = await RegionHarness.start(reactor)
        names = insert_nodes(harness, agents)
        call = harness.client()
        pserv = Child(pserv_argv(harness, args, "--expect", str(n),
                                 *(("--profile-sweep",) if args.profile else ()),
                                 *(("--trace",) if args.trace else ())))
        try:
            await pserv.until("known", args.timeout)
            started = time.time()
            code, body = await call("POST", "/v1/power", {"nodes": names, "action": "on"})
            if code != 202:
                raise RuntimeError(f"POST /v1/power: {code} {body}")
            answered = time.time() - started
            ids = [op["id"] for op in body["operations"]] if "operations" in body \
                else body["ids"]
            pending, ok, last, last_start = await wait_ops(harness, ids, args.timeout)
            rss = pserv.rss_mb()
            others = await ended_otherwise(harness, ids)
            if args.trace:
                pserv.proc.stdin.close()
                traced = (await pserv.until("end", 60)).get("trace")
        finally:
            pserv.close()
    finally:
        await _tear_down(sim, harness, files)
    took = last - started
    ratio = base["s"] / took if took > 0 else 0.0
    return [row(f"power on {n} IPMI nodes (issue: 5000), one POST /v1/power s",
                base["s"], took, ratio,
                ">= 0.9 x", ratio >= 0.9 and not pending,
                f"{ok} succeeded, {pending} open; request answered in {answered:.2f} s; "
                f"last one started after {last_start - started:.1f} s; "
                f"bare failures {base['failed']}"
                + (f"; not succeeded: {others}" if others else "")
                + (f"; trace: bare {base.get('trace')}, pserv {traced}; "
                   + lag(started, traced, last) if args.trace else "")),
            row(f"pserv RSS MB, {n} ipmi nodes after power-on", 0.0, rss, 0.0, "<= 100 MB",
                rss <= 100.0, "no baseline")]


async def ipmi_memory_row(reactor, args):
    """
    The pserv's peak RSS after one sweep of ``--ipmi-sweep`` IPMI nodes
    (logins included: the first sweep after a start, and every sweep at the
    default 60 s poll interval, which exceeds the driver's ``max_idle``).
    """
    from harness import RegionHarness

    n = args.ipmi_sweep
    sim = _ipmi_sims(n, args)
    harness = None
    files = []
    pservs = {}
    try:
        info = await sim.line(120)
        agents = _ipmi_agents(info["ports"])
        files.append(write_agents(agents))
        bare = Child(bare_argv(files[0], args, "--action", "query", "--rounds", "1",
                               "--concurrency", str(args.concurrency)))
        try:
            await bare.until("started", 60)
            base = (await bare.events("round", 1, args.timeout, peer=sim))[0]
        finally:
            bare.close()
        harness = await RegionHarness.start(reactor)
        insert_nodes(harness, agents)
        variants = {"pserv": None}
        if args.ipmi_keep_all:
            variants["keep-all"] = '{"max_sessions": null, "max_idle": 1e9}'
        for variant in args.ipmi_pserv:
            name, _, options = variant.partition("=")
            variants[name] = options
        for name, options in variants.items():
            env = {"POWERCTL_BENCH_IPMI_OPTIONS": options} if options else {}
            pserv = Child(pserv_argv(harness, args, "--expect", str(n), "--sweeps", "1"),
                          env=env)
            try:
                await pserv.until("started", 60)
                known = await pserv.until("known", args.timeout)
                sweep = (await pserv.events("sweep", 1, args.timeout, peer=sim))[0]
                end = await pserv.until("end", args.timeout)
                pservs[name] = (known, sweep, end)
            except Exception as e:
                if name == "pserv":
                    raise
                # a comparison failing (the pserv keeping every session can
                # outlast --timeout) must not hide the row
                pservs[name] = (None, None, f"{type(e).__name__}: {str(e)[:60]}, RSS then "
                                            f"{pserv.rss_mb():.1f} MB")
            finally:
                pserv.close()
    finally:
        await _tear_down(sim, harness, files)
    known, sweep, end = pservs["pserv"]
    peak = end["peak_mb"]

    def told(label, s):
        return (f"{label} sweep {s['s']:.1f} s, CPU {s['cpu']:.1f} s (simulators "
                f"{s['peer_cpu']:.1f})")

    note = (f"after 1 sweep; now {end['rss_mb']:.0f} MB; baseline: bare drivers; pserv learnt"
            f" {n} nodes in {known['s']:.1f} s; {told('bare', base)}, failed {base['failed']};"
            f" {told('pserv', sweep)}{states(sweep)}")
    for name, (_, other, other_end) in pservs.items():
        if name == "pserv":
            continue
        label = "keeping every session" if name == "keep-all" else name
        if other is None:
            note += f"; pserv {label}: failed ({other_end})"
            continue
        note += (f"; pserv {label}: peak {other_end['peak_mb']:.1f} MB, " + told("its", other)
                 + f" (CPU ratio pserv / it {sweep['cpu'] / other['cpu']:.2f})")
    return [row(f"pserv RSS MB, {n} ipmi nodes (peak)", base["peak_mb"], peak,
                base["peak_mb"] / peak, "<= 100 MB", peak <= 100.0, note)]


#: printed under every table: what the ratio column means
RATIO = ("ratio: powerctl as a share of the baseline, >= 1 is as good: baseline/powerctl for"
         " times and memory, powerctl/baseline for rates")


def print_table(rows, out=sys.stdout):
    print(f"{'figure':62} {'baseline':>9} {'powerctl':>9} {'ratio':>6}  {'target':10} ok",
          file=out)
    for r in rows:
        print(f"{r['figure'][:62]:62} {r['baseline']:9.2f} {r['value']:9.2f} "
              f"{r['ratio']:6.2f}  {r['target']:10} {'yes' if r['ok'] else 'NO'}", file=out)
    print(RATIO, file=out)
    for r in rows:
        if r.get("note"):
            print(f"  {r['figure']}: {r['note']}", file=out)


async def bench(reactor, args):
    wanted = [w for w in args.only.split(",") if w]
    rows = []
    if args.logs:
        from twisted.logger import globalLogBeginner, textFileLogObserver

        os.makedirs(args.logs, exist_ok=True)
        globalLogBeginner.beginLoggingTo(
            [textFileLogObserver(open(os.path.join(args.logs, "region.log"), "a"))],
            redirectStandardIO=False)
    for what in wanted:
        t = time.monotonic()
        try:
            if what in ("snmp", "redfish"):
                got = await sweep_rows(reactor, args, what)
            elif what == "replay":
                got = await replay_row(reactor, args)
            elif what == "ipmi":
                got = await ipmi_row(reactor, args)
            elif what == "ipmimem":
                got = await ipmi_memory_row(reactor, args)
            else:
                raise SystemExit(f"unknown row {what!r}; rows: {', '.join(ROWS)}")
        except Exception as e:  # one row failing must not hide the others
            got = [row(f"{what}: FAILED ({type(e).__name__}: {str(e)[:80]})", 0.0, 0.0, 0.0,
                       "", False)]
            import traceback

            traceback.print_exc()
        print(f"[{what}: {time.monotonic() - t:.0f} s]", file=sys.stderr, flush=True)
        for r in got:
            if args.json:
                print(json.dumps(r), flush=True)
        rows += got
    if not args.json:
        print_table(rows)


def main(argv=None):
    from harness import run

    run(bench, parse(argv))


def _ipmi_sims(n, args):
    """``n`` simulated BMCs (``powerctl sim ipmi``) in a process of their own."""
    return Child(["-m", "powerctl.cli.main", "sim", "ipmi", "--json", "--count", str(n),
                  "--latency", str(args.ipmi_latency), "--username", "admin",
                  "--password", "password"], stdin=False)


def _ipmi_agents(ports):
    """One ``ipmi`` agent per simulated BMC port, with the simulators' login."""
    return [{"driver": "ipmi", "params": {"host": "127.0.0.1", "port": port,
                                          "username": "admin", "password": "password"}}
            for port in ports]


async def _tear_down(sim, harness, files):
    """After an IPMI row: the simulator process, the harness, the row's files."""
    sim.proc.terminate()
    sim.proc.wait(10)
    if harness is not None:
        await harness.close()
    for f in files:
        os.unlink(f)


if __name__ == "__main__":
    main()
