"""
Chaos: two regions and three pservs as real ``twistd`` processes, one
PostgreSQL, six slow simulated Redfish systems, a random workload of
conflicting on/off/cycle requests sent to both regions -- and in the middle
of it pservs and a region are killed with SIGKILL and restarted, and
PostgreSQL is restarted (``pg_ctl restart -m fast``).

Seeded: ``POWERCTL_CHAOS_SEED`` fixes the seed (else a random one); every
assertion's message starts with it, so a failure can be replayed.  Leases
are short (3 s, margin 1.2 s, heartbeats every 0.5 s) so the fleet converges
quickly; the whole test takes 45-50 s on two cores.

Afterwards, for every node:

* every operation is terminal;
* the last request (by id, among the operations with a target) succeeded,
  and hardware state = ``desired_state`` = ``power_state`` = its target;
(The chaos: a pserv, a region, PostgreSQL, another pserv, PostgreSQL again
and the other region, at seeded times within the workload's 36 s.)

* **one driver at a time**: every ``ComputerSystem.Reset`` the simulator
  received came from the pserv that the database named as the node's owner
  just before or just after it arrived (the test samples ``nodes.owner_epoch``
  every 0.1 s) -- a pserv that kept driving a node it had lost would show up
  here;
* **no stale operation reaches the hardware**: every Reset is explained by an
  operation of that node whose action sends that reset type and that was
  open when the Reset arrived (requested before it, finished -- including
  superseded or cancelled -- not before it); a superseded operation whose
  command arrives after its outcome was journalled is unexplained.

The simulator learns who sent each command from the User-Agent
(``powerctl-pserv/<name>``) the pserv's HTTP drivers send.
"""

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import psycopg2
import treq
from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from tests.pg import DatabaseMixin
from tests.system import SystemMixin, free_port, wait_until

SEED_ENV = "POWERCTL_CHAOS_SEED"

#: ``twistd`` under this interpreter (``python -m twisted`` is ``twist``).
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"

#: Which operations may send which Redfish reset type (see
#: powerctl.drivers.redfish.RESET_PREFERENCES and the verifying base class:
#: cycle is a verified ForceOff then a verified On; soft-off falls back to
#: ForceOff after its timeout).
SENDS = {
    "On": {"on", "cycle"},
    "ForceOn": {"on", "cycle"},
    "ForceOff": {"off", "cycle", "soft-off"},
    "GracefulShutdown": {"soft-off"},
}
TARGET = {"on": "on", "off": "off", "soft-off": "off", "cycle": "on"}
TERMINAL = ("succeeded", "failed", "superseded", "cancelled")
PSERVS = ("pserv-a", "pserv-b", "pserv-c")
REGIONS = ("region-a", "region-b")

#: Tolerance when comparing simulator times with journal times (one host,
#: one clock; this only absorbs the commit's own latency).
SLACK = 0.25


def _die_with_parent():
    """In the child: SIGKILL it when the test process dies (Linux), however it dies."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


class ChaosTests(SystemMixin, DatabaseMixin, unittest.TestCase):
    timeout = 200
    nodes = tuple(f"node{i}" for i in range(1, 7))
    switch_delay = 1.0          # slow BMCs: each transition takes a second
    lease = 3.0
    lease_margin = 1.2
    heartbeat_interval = 0.5
    poll_interval = 2.0
    workload_seconds = 36.0
    converge_seconds = 60.0

    def setUp(self):
        super().setUp()
        seed = os.environ.get(SEED_ENV)
        self.seed = int(seed) if seed else random.randrange(2**32)
        self.rng = random.Random(self.seed)
        # Configs and daemon logs; kept when the test fails (the message names it).
        self.dir = tempfile.mkdtemp(prefix="powerctl-chaos-")
        self.passed = False
        self.addCleanup(lambda: self.passed and shutil.rmtree(self.dir, ignore_errors=True))
        self.procs = {}
        self.logs = {}
        self.events = []          # (time, what) of the chaos, for failure messages
        self.samples = []         # (time, {node: owning pserv}) from the database
        self.sent = []            # (time, region, node, action, status)
        self.region_api = {}
        self.region_rpc = {}
        for name in REGIONS:
            self.region_api[name] = free_port()
            self.region_rpc[name] = free_port()
        self.addCleanup(self._kill_all)

    def msg(self, text):
        """Every assertion message names the seed, so the run can be replayed."""
        return (f"[{SEED_ENV}={self.seed}] {text}\nchaos events: {self.events}\n"
                f"logs: {self.dir}")

    # -- processes ----------------------------------------------------------

    def _config(self, name, section, values):
        path = os.path.join(self.dir, f"{name}.toml")
        lines = [f"[{section}]"]
        for key, value in values.items():
            if isinstance(value, str):
                lines.append(f'{key} = "{value}"')
            elif isinstance(value, (list, tuple)):
                lines.append(f"{key} = [{', '.join(repr(v).replace(chr(39), chr(34)) for v in value)}]")
            else:
                lines.append(f"{key} = {value}")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def _spawn(self, name, plugin, config):
        log = open(self.logs.setdefault(name, os.path.join(self.dir, f"{name}.log")), "ab")
        log.write(f"\n==== started at {time.time():.3f}\n".encode())
        log.flush()
        process = subprocess.Popen(
            [sys.executable, "-c", TWISTD, "-n", "--pidfile=", plugin, "--config", config],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent)
        log.close()
        self.procs[name] = process
        return process

    def start_region_process(self, name):
        config = self._config(name, "region", {
            "name": name, "database": self.dsn,
            "api_endpoint": f"tcp:{self.region_api[name]}:interface=127.0.0.1",
            "rpc_endpoint": f"tcp:{self.region_rpc[name]}:interface=127.0.0.1",
            "secret_file": self.secret_file, "heartbeat_timeout": 5.0,
            "lease": self.lease, "key_file": self.key_file,
        })
        return self._spawn(name, "powerctl-region", config)

    def start_pserv_process(self, name):
        config = self._config(name, "pserv", {
            "name": name, "cluster": "c1",
            "regions": [f"tcp:host=127.0.0.1:port={self.region_rpc[r]}" for r in REGIONS],
            "secret_file": self.secret_file, "poll_interval": self.poll_interval,
            "heartbeat_interval": self.heartbeat_interval,
            "lease_margin": self.lease_margin,
        })
        return self._spawn(name, "powerctl-pserv", config)

    def kill(self, name):
        process = self.procs.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait()

    def _kill_all(self):
        for name in list(self.procs):
            self.kill(name)

    def api_of(self, region):
        return f"http://127.0.0.1:{self.region_api[region]}"

    async def region_up(self, region):
        try:
            code, _ = await self.call("GET", "/v1/clusters", api=self.api_of(region))
            return code == 200
        except Exception:
            return False

    async def connected_everywhere(self):
        for region in REGIONS:
            code, body = await self.call("GET", "/v1/clusters", api=self.api_of(region))
            up = {p["name"] for c in body for p in c.get("pservs", []) if p.get("connected")}
            if not set(PSERVS) <= up:
                return False
        return True

    # -- the database, read directly (the test's own view) ------------------

    def _query(self, sql, *args):
        conn = psycopg2.connect(self.dsn)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args or None)
                return cur.fetchall()
        finally:
            conn.close()

    def _sample_owners(self):
        """Record who owns each node now (skipped while PostgreSQL is down)."""
        try:
            if self._sampler_conn is None or self._sampler_conn.closed:
                self._sampler_conn = psycopg2.connect(self.dsn, connect_timeout=1)
                self._sampler_conn.autocommit = True
            with self._sampler_conn.cursor() as cur:
                before = time.time()
                cur.execute("SELECT n.name, l.pserv FROM nodes n"
                            " LEFT JOIN leases l ON l.epoch = n.owner_epoch")
                rows = cur.fetchall()
                after = time.time()
        except psycopg2.Error:
            if self._sampler_conn is not None:
                self._sampler_conn.close()
            self._sampler_conn = None
            return
        # The snapshot is of some instant inside [before, after]: keep both.
        self.samples.append((before, after, dict(rows)))

    # -- chaos --------------------------------------------------------------

    def note(self, what):
        self.events.append((round(time.time() - self.t0, 2), what))

    async def restart_postgres(self):
        self.note("pg_ctl restart -m fast")
        await threads.deferToThread(
            self.pg._run, "pg_ctl", "-D", self.pg.datadir, "-w", "-s", "-m", "fast",
            "-l", os.path.join(self.pg.directory, "server.log"), "restart")
        self.note("postgres back")

    async def kill_and_restart(self, name, at, down):
        await sleep(at)
        self.note(f"SIGKILL {name}")
        self.kill(name)
        await sleep(down)
        self.note(f"restart {name}")
        if name in REGIONS:
            self.start_region_process(name)
        else:
            self.start_pserv_process(name)

    async def chaos(self):
        """
        Seeded times: a pserv killed, a region killed, PostgreSQL restarted,
        another pserv killed, PostgreSQL restarted again, the other region
        killed -- each restarted after a random pause.
        """
        rng = self.rng
        first, second = rng.sample(PSERVS, 2)
        region_1, region_2 = rng.sample(REGIONS, 2)
        await defer.gatherResults([
            defer.ensureDeferred(self.kill_and_restart(first, rng.uniform(3, 7),
                                                       rng.uniform(0.3, 3.0))),
            defer.ensureDeferred(self.kill_and_restart(region_1, rng.uniform(8, 12),
                                                       rng.uniform(0.5, 3.0))),
            defer.ensureDeferred(self._later(rng.uniform(13, 16), self.restart_postgres)),
            defer.ensureDeferred(self.kill_and_restart(second, rng.uniform(18, 22),
                                                       rng.uniform(0.3, 3.0))),
            defer.ensureDeferred(self._later(rng.uniform(24, 27), self.restart_postgres)),
            defer.ensureDeferred(self.kill_and_restart(region_2, rng.uniform(29, 33),
                                                       rng.uniform(0.5, 3.0))),
        ], consumeErrors=True)

    async def _later(self, delay, f):
        await sleep(delay)
        await f()

    async def workload(self):
        rng = random.Random(self.rng.random())
        pending = []
        deadline = time.time() + self.workload_seconds
        while time.time() < deadline:
            node = rng.choice(self.nodes)
            action = rng.choice(("on", "off", "cycle", "on", "off"))
            region = rng.choice(REGIONS)
            pending.append(defer.ensureDeferred(self._request(region, node, action)))
            # Bursts on one node now and then: conflicting requests close together.
            await sleep(rng.choice((0.02, 0.05, 0.2, 0.3, 0.5)))
        await defer.gatherResults(pending, consumeErrors=True)

    async def _request(self, region, node, action):
        t = time.time() - self.t0
        try:
            d = treq.post(f"{self.api_of(region)}/v1/nodes/{node}/power",
                          json={"action": action, "requester": "chaos"}, pool=self.http,
                          headers=self.auth_headers())
            d.addTimeout(5, reactor)
            response = await d
            await treq.content(response)
            status = response.code
        except Exception as e:
            status = type(e).__name__
        self.sent.append((round(t, 2), region, node, action, status))

    # -- the test -----------------------------------------------------------
    async def test_chaos(self):
        self._sampler_conn = None
        self.t0 = time.time()
        for region in REGIONS:
            self.start_region_process(region)
        for region in REGIONS:
            await wait_until(lambda: self.region_up(region), timeout=30)
        self.api = self.api_of(REGIONS[0])   # SystemMixin's helpers
        for name in self.nodes:
            await self.add_node(name)
        for name in PSERVS:
            self.start_pserv_process(name)
        await wait_until(self.connected_everywhere, timeout=30)
        self.t0 = time.time()
        self.note("workload starts")

        sampler = task.LoopingCall(self._sample_owners)
        sampler.start(0.1)
        try:
            await defer.gatherResults([defer.ensureDeferred(self.workload()),
                                       defer.ensureDeferred(self.chaos())],
                                      consumeErrors=True)
            self.note("workload and chaos over")
            await self.converge()
        finally:
            sampler.stop()
            if self._sampler_conn is not None:
                self._sampler_conn.close()
        self.note("converged")
        self.check()
        self.passed = True
        resets = sum(1 for r in self.sim.log if r.reset_type is not None)
        print(f"\nchaos seed {self.seed}: {len(self.sent)} requests "
              f"({sum(1 for s in self.sent if s[4] == 202)} accepted), {resets} resets checked, "
              f"{len(self.samples)} ownership samples; events {self.events}")

    def _converged(self):
        try:
            open_ops = self._query(
                "SELECT count(*) FROM power_ops WHERE state NOT IN %s", TERMINAL)[0][0]
            nodes = self._query("SELECT name, desired_state, power_state FROM nodes")
        except psycopg2.Error:
            return False
        if open_ops:
            return False
        for name, desired, power in nodes:
            hardware = self.sim.systems[name].power_state.lower()
            if desired is not None and not (desired == power == hardware):
                return False
        return True

    async def converge(self):
        try:
            await wait_until(lambda: defer.succeed(self._converged()),
                             timeout=self.converge_seconds, interval=0.2)
        except AssertionError:
            pass   # check() says precisely what did not converge

    def check(self):
        ops = self._query(
            "SELECT id, node, action, state, superseded_by, coalesced_into, pserv,"
            " extract(epoch FROM requested_at)::float8, extract(epoch FROM finished_at)::float8,"
            " error FROM power_ops ORDER BY id")
        nodes = {name: (desired, power) for name, desired, power in
                 self._query("SELECT name, desired_state, power_state FROM nodes")}
        self.assertTrue(ops, self.msg("no operation was journalled"))
        by_node = {}
        for op in ops:
            by_node.setdefault(op[1], []).append(op)

        # 1. Every operation is terminal.
        open_ops = [op for op in ops if op[3] not in TERMINAL]
        self.assertEqual(open_ops, [], self.msg("operations still open after convergence"))

        # 2. The last request of each node won, everywhere.
        for name in self.nodes:
            changes = [op for op in by_node.get(name, []) if op[2] in TARGET]
            if not changes:
                continue
            last = changes[-1]
            want = TARGET[last[2]]
            desired, power = nodes[name]
            hardware = self.sim.systems[name].power_state.lower()
            history = [(op[0], op[2], op[3]) for op in changes[-6:]]
            self.assertEqual(last[3], "succeeded", self.msg(
                f"{name}: its last request {last} did not succeed; last ones: {history}"))
            self.assertEqual((hardware, desired, power), (want, want, want), self.msg(
                f"{name}: (hardware, desired_state, power_state) differ from the last "
                f"request's target {want!r} (op {last[0]} {last[2]}); last ones: {history}"))

        # 3. One driver at a time, and 4. no stale operation reaches the hardware.
        resets = {}
        for record in self.sim.log:
            if record.method == "POST" and record.path.endswith("/Actions/ComputerSystem.Reset"):
                node = record.path.split("/")[4]
                resets.setdefault(node, []).append(record)
        self.assertTrue(resets, self.msg("no Reset reached the simulator"))
        for name, records in resets.items():
            senders = []
            for r in records:
                self.assertTrue(r.user_agent and r.user_agent.startswith("powerctl-pserv/"),
                                self.msg(f"{name}: a Reset without a pserv User-Agent: {r}"))
                sender = r.user_agent.split("/", 1)[1]
                if not senders or senders[-1][0] != sender:
                    senders.append([sender, round(r.time - self.t0, 2), 0])
                senders[-1][2] += 1
                owners = self._owners_around(name, r.time)
                self.assertIn(sender, owners, self.msg(
                    f"{name}: {sender} sent {r.reset_type} at t={r.time - self.t0:.2f} while "
                    f"the database named {owners} as owner just before and after; "
                    f"sender blocks (pserv, first t, count): {senders}"))
                explained = [
                    op for op in by_node.get(name, [])
                    if op[2] in SENDS.get(r.reset_type, ())
                    and op[7] <= r.time + SLACK
                    and (op[8] is None or op[8] >= r.time - SLACK)
                ]
                self.assertTrue(explained, self.msg(
                    f"{name}: {r.reset_type} from {sender} at t={r.time - self.t0:.2f} is "
                    f"explained by no operation open at that time: a stale or superseded "
                    f"operation reached the hardware; operations of the node around then: "
                    f"{self._ops_around(by_node.get(name, []), r.time)}"))

    def _owners_around(self, node, t):
        """The node's owners in the last sample before ``t`` and the first after it."""
        before = after = None
        for start, end, owners in self.samples:
            if end <= t:
                before = owners.get(node)
            elif start >= t:
                after = owners.get(node)
                break
            else:  # the snapshot may be from either side of t
                before = before if before is not None else owners.get(node)
                after = owners.get(node)
        return {o for o in (before, after) if o is not None}

    def _ops_around(self, ops, t):
        return [(op[0], op[2], op[3], op[6], round(op[7] - self.t0, 2),
                 None if op[8] is None else round(op[8] - self.t0, 2))
                for op in ops if op[7] <= t + 5 and (op[8] is None or op[8] >= t - 5)]


class LostReportUnderANewLeaseTests(unittest.TestCase):
    """
    Found while reading the chaos runs' failure modes: an outcome the region
    never recorded (refused while PostgreSQL was down, or flushed from the
    outbox after the pserv registered again) is answered from memory when
    the region hands the operation out again -- under the lease it is handed
    out under, or the region would refuse it as stale at every re-dispatch
    and the operation would stay open for good.
    """

    def test_a_remembered_outcome_is_reported_under_the_current_lease(self):
        from powerctl.power import PowerState
        from powerctl.pserv.core import Pserv
        from powerctl.registry import PowerActionRegistry
        from tests.test_pserv_core import POWER, ConfiguredFakeExecutor

        executor = ConfiguredFakeExecutor(auto_quiesce=False)
        registry = PowerActionRegistry(executor, task.Clock(), cancel_timeout=5)
        reports = []
        pserv = Pserv(registry, executor, reports.append)
        pserv.epoch = 3
        pserv.dispatch(1, "n1", "off", POWER)
        executor.finish("1", PowerState.OFF)
        self.assertEqual([(r.outcome, r.epoch) for r in reports], [("succeeded", 3)])
        pserv.epoch = 7  # that report was lost; our lease lapsed and we registered again
        self.assertEqual(pserv.dispatch(1, "n1", "off", POWER, epoch=7), ("known", 0))
        self.assertEqual([(r.outcome, r.epoch) for r in reports],
                         [("succeeded", 3), ("succeeded", 7)])
        self.assertEqual(executor.started_ops(), ["1"])  # not run twice
