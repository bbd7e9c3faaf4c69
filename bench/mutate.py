"""
Mutation testing of the decision and glue modules: ``make mutate``.

    .venv/bin/python bench/mutate.py [--only slots,registry] [--budget 1800]
                                     [--jobs 2] [--workdir DIR] [--keep]

Not part of ``make test``.  For each module below it mutates the source (one
small change at a time: ``<`` to ``<=``, ``and`` to ``or``, a dropped
``not``, a number off by one, a removed decorator, a loop that never runs,
...), runs only the fast tests that cover that module, and counts a mutant
*killed* when those tests fail (or hang past the timeout).  It prints the
kill rate per module and every mutant that survived.

Tool: cosmic-ray (maintained, on PyPI).  Chosen over mutmut 3 because
cosmic-ray runs each mutant's tests in a *fresh interpreter* with an
explicit test command per module, which is what this suite needs: the tests
are trial TestCases under pytest-twisted's asyncio reactor, and some start a
private PostgreSQL cluster; mutmut 3 instead forks one long-lived pytest
process per mutant, which does not mix with an installed, running reactor,
and it picks tests by its own coverage map rather than the module -> tests
mapping below.  cosmic-ray mutates the file *in place*, so this script never
runs it on the checkout: it copies the committed tree (HEAD; or, with
--working-tree, the files as they are now) to a directory under /tmp -- one copy per parallel job
-- and runs every session there.  The checkout is only read.

Bounded time: the whole run aims at ``--budget`` seconds of wall clock
(default 1800) with ``--jobs`` modules in parallel (default 2).  A module
gets, when it starts, its share (by weight) of the worker time left; one
that finishes early leaves the rest to the modules after it.  Within its
share a module tests its mutants in one fixed order (a hash of operator and
occurrence), in rounds: first as many as the unmutated tests' time says
fit, then -- with the time per mutant measured, killed ones stop at their
first failing test -- more, until the share is used.  The pure modules are
tested whole; the PostgreSQL-backed region modules get a deterministic
sample and the report says "tested N of M".  A mutant whose tests run past
``timeout`` seconds counts as killed (it hung).  Survivors listed in
EQUIVALENT below are marked, with the reason, and the report gives the kill
rate without them too.

Operators: cosmic-ray's core set, trimmed to the mutants that stand for a
plausible slip rather than noise -- comparison boundary and negation
(``<`` to ``<=`` and ``>=``, ``==`` to ``!=``, ``is`` to ``is not``), the
arithmetic inverses (``+``/``-``, ``*``/``/``), dropped ``not``/``-``,
``and``/``or``, ``True``/``False``, numbers +-1, ``break``/``continue``,
an added ``not``, removed decorators, zero-iteration loops, and exception
handlers that catch the wrong exception.  The other binary-operator
replacements (``+`` to ``<<``, ``**``, ``^`` ...) are skipped: they
multiply the count tenfold and are killed by anything.
"""

import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# name, module under test, the fast tests that cover it (most telling
# first: with ``-x`` a killed mutant stops at its first failing test), share
# of the budget, per-mutant timeout (seconds).  Shares are relative and
# follow the measured cost of testing every mutant of the pure modules; the
# region modules need a PostgreSQL cluster per test run (20-40 s a mutant)
# and get a deterministic sample of what their share allows.  Modules are
# started in this order, the costliest first, so that the two jobs end
# together.
REGISTRY_TESTS = ["tests/test_registry_bite.py", "tests/test_registry.py",
                  "tests/test_registry_edges.py", "tests/test_registry_properties.py",
                  "tests/test_pserv_core.py"]
PSERV_TESTS = ["tests/test_pserv_core_bite.py", "tests/test_pserv_core.py",
               "tests/test_pserv_edges.py",
               "tests/test_pserv_lease_edges.py",
               "tests/test_executor.py", "tests/test_executor_edges.py",
               # the pserv whole, in memory: re-sent operations, fences,
               # PowerMany batches and ReportOutcomes (no database)
               "tests/test_pserv_duplicates.py", "tests/test_fencing.py",
               "tests/test_bulk_dispatch.py", "tests/test_rpc.py"]
# The executor's own first, then the circuits (budgets handed to drivers)
# and the poller's PDU grouping (config_text, the lock-out guard), then the
# pserv's (which reach the executor through dispatch).
EXECUTOR_TESTS = ["tests/test_executor_bite.py", "tests/test_executor.py",
                  "tests/test_executor_edges.py", "tests/test_circuits.py",
                  "tests/test_poller_grouping.py",
                  *[t for t in PSERV_TESTS if "executor" not in t]]
# The region's own edge tests need no database and go first.  The store is
# one module per kind (powerctl/region/store/); each gets the tests that
# reach it.  test_api.py (the REST paths, pod managers), test_web.py
# (/metrics, the only user of the operation counts) and test_drift.py (drift
# enforcement, cluster policies) killed survivors the first three missed
# (bench/RESULTS.md, "Survivors left").  test_store_locks.py runs two
# transactions at once: the row locks no one-transaction test can see.
# Since 2026-12-05 also: test_batch_store.py and test_lock_order.py (issue
# 14's batches, row-lock order, deadlock retries), test_prepared.py (base's
# prepared statements), test_paging.py (the status page's one statement, in
# nodes.py), test_bulk.py and test_pruning.py (bulk requests and pruning, in
# operations.py): each killed mutants no other mapped test did.
STORE_BASE_TESTS = ["tests/test_region_edges.py", "tests/test_store_locks.py",
                    "tests/test_prepared.py", "tests/test_lock_order.py",
                    "tests/test_store.py", "tests/test_rpc.py", "tests/test_lifecycle.py"]
STORE_NODES_TESTS = ["tests/test_region_edges.py", "tests/test_batch_store.py",
                     "tests/test_lock_order.py", "tests/test_store_locks.py",
                     "tests/test_store.py", "tests/test_paging.py", "tests/test_api.py",
                     "tests/test_rpc.py", "tests/test_drift.py", "tests/test_lifecycle.py"]
STORE_OPS_TESTS = ["tests/test_region_edges.py", "tests/test_batch_store.py",
                   "tests/test_lock_order.py", "tests/test_pruning.py", "tests/test_store.py",
                   "tests/test_bulk.py", "tests/test_api.py",
                   "tests/test_rpc.py", "tests/test_web.py", "tests/test_lifecycle.py"]
STORE_CLUSTERS_TESTS = ["tests/test_region_edges.py", "tests/test_circuits_store.py",
                        "tests/test_store.py", "tests/test_lock_order.py",
                        "tests/test_drift.py", "tests/test_rpc.py",
                        "tests/test_api.py", "tests/test_lifecycle.py"]
STORE_PODS_TESTS = ["tests/test_store_locks.py", "tests/test_store.py", "tests/test_api.py",
                    "tests/test_podprobe.py", "tests/test_vault.py"]
MODULES = [
    ("pserv_core", "powerctl/pserv/core.py", PSERV_TESTS, 7, 60),
    ("store_nodes", "powerctl/region/store/nodes.py", STORE_NODES_TESTS, 3, 150),
    ("store_ops", "powerctl/region/store/operations.py", STORE_OPS_TESTS, 3, 150),
    ("store_base", "powerctl/region/store/base.py", STORE_BASE_TESTS, 1.5, 120),
    ("store_clusters", "powerctl/region/store/clusters.py", STORE_CLUSTERS_TESTS, 1, 150),
    ("store_pods", "powerctl/region/store/pod_managers.py", STORE_PODS_TESTS, 1.5, 120),
    ("registry", "powerctl/registry/registry.py", REGISTRY_TESTS, 6, 60),
    ("executor", "powerctl/pserv/executor.py", EXECUTOR_TESTS, 4, 60),
    # The lease, NOTIFY and drift paths of the region are tested by the
    # ownership and drift tests; the REST-facing ones by test_api.py.
    ("region_core", "powerctl/region/core.py",
     ["tests/test_region_batch_bite.py", "tests/test_region_core_bite.py",
      "tests/test_region_core_more.py",
      "tests/test_region_core_edges.py", "tests/test_region_dispatch.py",
      "tests/test_bulk_dispatch.py",
      "tests/test_ownership.py", "tests/test_lifecycle.py",
      "tests/test_rpc.py", "tests/test_drift.py", "tests/test_store.py"], 3, 180),
    ("region_rpc", "powerctl/region/rpc.py",
     ["tests/test_region_batch_bite.py", "tests/test_region_rpc_bite.py",
      "tests/test_region_edges.py", "tests/test_bulk_dispatch.py",
      "tests/test_region_dispatch.py", "tests/test_rpc.py", "tests/test_ownership.py",
      "tests/test_lifecycle.py", "tests/test_drift.py", "tests/test_store.py"], 3, 180),
    ("slots", "powerctl/pserv/slots.py",
     ["tests/test_slots.py", "tests/test_slots_edges.py"], 2, 30),
    ("multiagent", "powerctl/drivers/multiagent.py",
     ["tests/test_multiagent.py", "tests/test_multiagent_edges.py"], 1.5, 30),
    ("topology", "powerctl/drivers/topology.py",
     ["tests/test_topology.py", "tests/test_multiagent.py", "tests/test_multiagent_edges.py"],
     4, 60),
    ("base", "powerctl/drivers/base.py",
     ["tests/test_base_driver_bite.py", "tests/test_base_driver.py",
      "tests/test_base_driver_edges.py", "tests/test_circuits.py"], 1.5, 30),
    # issue 13: automatic fencing's decision (pure) and the lock-out guard
    ("autofence", "powerctl/region/autofence.py", ["tests/test_autofence.py"], 2, 30),
    ("lockout", "powerctl/pserv/lockout.py",
     ["tests/test_lockout_edges.py", "tests/test_lockout.py", "tests/test_lockout_proof.py"],
     2, 60),
    # the pserv's link to the regions: outbox, pacing, hand-shake, recovery
    ("link", "powerctl/pserv/link.py",
     ["tests/test_link_outbox.py", "tests/test_link_recover.py",
      "tests/test_pserv_duplicates.py", "tests/test_amp_hostile.py",
      "tests/test_failures_logged.py", "tests/test_rpc.py"], 3, 60),
    ("policy", "powerctl/registry/policy.py", REGISTRY_TESTS, 2, 60),
    ("actions", "powerctl/registry/actions.py", REGISTRY_TESTS, 2, 60),
]

KEEP_OPERATORS = re.compile(
    r"core/("
    r"ReplaceComparisonOperator_(Eq_NotEq|NotEq_Eq|Lt_LtE|Lt_GtE|LtE_Lt|LtE_Gt"
    r"|Gt_GtE|Gt_LtE|GtE_Gt|GtE_Lt|Is_IsNot|IsNot_Is)"
    r"|ReplaceBinaryOperator_(Add_Sub|Sub_Add|Mul_Div|Div_Mul|FloorDiv_Div|Mod_FloorDiv"
    r"|BitOr_BitAnd|BitAnd_BitOr)"
    r"|ReplaceUnaryOperator_(Delete_Not|Delete_USub|Delete_Invert)"
    r"|NumberReplacer|ReplaceTrueWithFalse|ReplaceFalseWithTrue"
    r"|ReplaceAndWithOr|ReplaceOrWithAnd|ReplaceBreakWithContinue"
    r"|ReplaceContinueWithBreak|AddNot|RemoveDecorator|ZeroIterationForLoop"
    r"|ExceptionReplacer"
    r")$"
)

# Survivors judged equivalent (no test can tell them from the original, or
# only through a detail nobody relies on): module, operator, a piece of the
# original line, a piece of the mutated line, why.  They are still listed,
# marked, and the report gives the kill rate without them as well.  See
# bench/RESULTS.md, "Mutation testing".
_LIVE = "while self._waiting and self._waiting"
EQUIVALENT = [
    ("powerctl/region/rpc.py", "ReplaceComparisonOperator_LtE_Lt",
     "<= commands.MAX_VALUE:", "< commands.MAX_VALUE:",
     "a page of exactly MAX_VALUE bytes falls through to the prefix loop, whose "
     "total is then exactly MAX_VALUE: the whole page is kept either way"),
    ("powerctl/region/core.py", "NumberReplacer", "self.dispatch(ops[0])", "ops[ -1]",
     "this branch runs only when len(ops) == 1: ops[0] is ops[-1]"),
    ("powerctl/pserv/slots.py", "NumberReplacer", _LIVE, "",
     "the heap holds entries only while every slot is busy, and _live_waiters "
     "runs only when one is free: this loop never iterates"),
    ("powerctl/pserv/slots.py", "NumberReplacer", "return 0 if action is Action.QUERY",
     "return -1", "any priority below the lowest rank orders queries the same; only "
     "the number in a slot snapshot differs"),
    ("powerctl/registry/policy.py", "NumberReplacer", "Action.", "",
     "ranks are only compared with each other: +-1 keeps 40 > 30 > 20 > 10 strict"),
    ("powerctl/registry/actions.py", "ReplaceFalseWithTrue", "@attrs.define(eq=False)", "",
     "each PowerAction has its own Deferred, compared by identity: two are never "
     "equal, and none is hashed"),
    ("powerctl/registry/actions.py", "ReplaceFalseWithTrue", "init=False", "init=True",
     "the constructor only accepts one more optional argument"),
    ("powerctl/registry/actions.py", "ReplaceFalseWithTrue", "repr=False", "repr=True",
     "repr only"),
    ("powerctl/registry/actions.py", "ReplaceFalseWithTrue", "stopping: bool = False", "",
     "the registry, the only constructor of ActionInfo, always passes stopping"),
    ("powerctl/registry/registry.py", "ReplaceFalseWithTrue", "@attrs.define(eq=False)", "",
     "jobs and nodes are only ever compared by identity"),
    ("powerctl/registry/registry.py", "RemoveDecorator",
     ("class _Node", "@attrs.define(eq=False)"), "",
     "_Node: a plain class with class-level None defaults behaves the same"),
    ("powerctl/registry/registry.py", "NumberReplacer", "cancel_timeout=30.0", "",
     "the pserv always passes its own STOP_TIMEOUT; the default is not relied on"),
    ("powerctl/registry/registry.py", "ReplaceContinueWithBreak", "continue", "break",
     "activity(): a node still in the table is never idle (_release removes idle ones)"),
    ("powerctl/pserv/core.py", "NumberReplacer", "activity[0].waiting", "activity[ -1]",
     "activity(node) lists at most one node: [0] and [-1] are the same"),
    ("powerctl/pserv/core.py", "NumberReplacer", "self._epochs.pop(op, None) or 0", "",
     "every dispatched operation has its epoch recorded, and epochs (a sequence) "
     "start at 1: the fallback 0 is never used"),
    ("powerctl/pserv/core.py", "NumberReplacer", "self._newest.get(node, 0)", "",
     "operation ids come from the journal's bigserial (1 and up): a default of "
     "-1, 0 or 1 lets no id be below it"),
    ("powerctl/pserv/executor.py", "NumberReplacer", "self._next = 0.0", "",
     "max(now, -1.0) is now for any clock at or after its epoch"),
    ("powerctl/drivers/topology.py", "ReplaceFalseWithTrue", 'getattr(e, "transient", False)',
     "", "every failure collected there is a PowerError, whose class defines transient"),
    # Only -2: "- 0" is 0, which restarts the operations phase (tested).
    ("powerctl/region/rpc.py", "NumberReplacer", "after_op = -1", "- 2",
     "the region only tests after_op >= 0, and the pserv echoes it back"),
    ("powerctl/region/rpc.py", "NumberReplacer", "PAGE = 100", "",
     "any page size pages correctly: the same constant is the limit and the "
     "full-page test, and _trim bounds a page by size"),
    # issue 13: the lock-out guard
    ("powerctl/pserv/lockout.py", "ReplaceTrueWithFalse", "sort_keys=True, default=str", "",
     "credentials_key builds both dicts in a fixed order (_ACCOUNT, sorted secrets): "
     "the same input gives the same key with or without sort_keys"),
    ("powerctl/pserv/lockout.py", "NumberReplacer", "_generation: int = attrs.field(default=0",
     "", "the generation is only compared with earlier values of itself: its start "
     "value does not matter"),
    ("powerctl/pserv/lockout.py", "ReplaceFalseWithTrue", "init=False", "init=True",
     "a private field the constructor would accept as one more optional argument"),
    ("powerctl/pserv/lockout.py", "NumberReplacer", "known_at.get((n, a), since + 1)", "",
     "hold() and acknowledged(), the only writers of a non-None id, set known_at too: "
     "the default is never used"),
    ("powerctl/pserv/lockout.py", "ReplaceBinaryOperator_Add_Sub",
     "known_at.get((n, a), since + 1)", "", "the default is never used (as above)"),
    ("powerctl/pserv/lockout.py", "NumberReplacer", "max(0, account.in_flight - 1)", "max( -1",
     "attempt() pairs started/ended and _drop keeps an account with attempts in flight: "
     "in_flight is at least 1 when it is decremented"),
    ("powerctl/pserv/lockout.py", "ReplaceContinueWithBreak",
     ("if node is None or self.on_lockout is None", "continue"), "break",
     "_lock's loop skips every user or none: (None, None) only ever comes alone, and "
     "on_lockout is the same for all"),
    ("powerctl/pserv/lockout.py", "ReplaceComparisonOperator_GtE_Gt", "if agent >= len(keys)",
     "", "register pads to agent + 1 entries or (at agent == len) not at all: the slice "
     "then appends the key, the same tuple"),
    ("powerctl/pserv/lockout.py", "NumberReplacer", "(agent + 1 - len(keys))", "agent + 0",
     "padding to agent entries, the slice appends the key: the same tuple as padding "
     "to agent + 1 and replacing the last None"),
    # The split store: defaults no caller uses (Store always passes the
    # grace from the settings; the AMP responder always passes its PAGE).
    ("powerctl/region/store/nodes.py", "NumberReplacer", "responsive_grace=60.0", "",
     "Store always passes responsive_grace to NodeStore: this default is never used"),
    ("powerctl/region/store/nodes.py", "NumberReplacer", "limit=500", "",
     "desired_states' and changed_since's only caller (rpc.recover) passes limit=PAGE"),
    ("powerctl/region/store/nodes.py", "NumberReplacer", "page_limit(limit, 500", "",
     "desired_states' and changed_since's only caller passes a limit, so "
     "page_limit's default is unused"),
    # The status page's one statement: its only caller passes every limit.
    ("powerctl/region/store/nodes.py", "NumberReplacer",
     'after_name="", limit=100, open_states=(), open_limit=200', "",
     "overview's only caller (the status page) passes limit and open_limit"),
    ("powerctl/region/store/nodes.py", "NumberReplacer", "finished_limit=20, seq=False", "",
     "overview's only caller (the status page) passes finished_limit"),
    ("powerctl/region/store/nodes.py", "NumberReplacer", "page_limit(finished_limit, 20)", "",
     "overview's only caller passes finished_limit: page_limit's default is unused"),
    ("powerctl/region/store/nodes.py", "NumberReplacer", "page_limit(open_limit, 200)", "",
     "overview's only caller passes open_limit: page_limit's default is unused"),
    ("powerctl/region/store/nodes.py", "NumberReplacer", "limit = page_limit(limit, 100)", "",
     "overview's only caller passes limit: page_limit's default is unused"),
    ("powerctl/region/store/clusters.py", "NumberReplacer", "heartbeat_timeout=90.0", "",
     "Store always passes heartbeat_timeout to ClusterStore: this default is never used"),
    ("powerctl/region/store/operations.py", "NumberReplacer", "zip(_OP_NAMES, rows[0])",
     "rows[ -1]", "the request statement journals one operation of one node: one row"),
    ("powerctl/region/store/operations.py", "NumberReplacer", "cluster, live = rows[0]",
     "rows[ -1]", "the request statement journals one operation of one node: one row"),
    ("powerctl/region/store/operations.py", "NumberReplacer", "limit=500", "",
     "outstanding's only caller (rpc.recover) passes limit=PAGE"),
    ("powerctl/region/store/operations.py", "NumberReplacer", "page_limit(limit, 500", "",
     "outstanding's only caller passes a limit, so page_limit's default is unused"),
    ("powerctl/region/store/pod_managers.py", "ExceptionReplacer",
     "except psycopg2.errors.ForeignKeyViolation", "",
     "delete holds the row FOR UPDATE first and a node's link takes KEY SHARE on it: "
     "under READ COMMITTED the users query sees every committed link and a later one "
     "waits, so the DELETE never meets the foreign key"),
    ("powerctl/region/store/base.py", "NumberReplacer", "return rows[0] if rows", "rows[ -1]",
     "Tx.row only runs queries on a key (one row at most): first and last are the same"),
]


def equivalent(module, survivor):
    diff = survivor["diff"]
    for path, operator, original, mutated, why in EQUIVALENT:
        if isinstance(original, tuple):
            # (a piece of the diff's context, a piece of the changed line):
            # for a line such as a bare ``continue`` that says nothing alone
            around, original = original
            if around not in diff.get("context", ""):
                continue
        if (path == module and survivor["operator"] == operator
                and original in diff["from"] and mutated in diff["to"]):
            return why
    return None


def log(msg):
    print(f"[mutate {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def copy_tree(dest, working_tree=False):
    """
    Copy the checkout: by default the committed tree (HEAD), which is
    consistent even while someone edits the working tree; with
    ``working_tree`` the files as they are now (tracked and untracked, not
    ignored).
    """
    dest.mkdir(parents=True)
    if not working_tree:
        archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"],
                                 cwd=REPO, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True).stdout
    for name in filter(None, out.decode().split("\0")):
        src = REPO / name
        if not src.is_file():
            continue  # deleted in the working tree
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def test_command(tests, tree):
    present = [t for t in tests if (tree / t).exists()]
    # -x: the first failure kills the mutant.  A fixed Hypothesis seed keeps
    # runs comparable.  The copy's setup.cfg supplies --reactor=asyncio.
    return " ".join([sys.executable, "-m", "pytest", "-x", "-q",
                     "-p", "no:cacheprovider", "--hypothesis-seed=0", *present])


def write_config(path, module, command, timeout):
    path.write_text(textwrap.dedent(f"""\
        [cosmic-ray]
        module-path = "{module}"
        timeout = {float(timeout)}
        excluded-modules = []
        test-command = "{command}"

        [cosmic-ray.distributor]
        name = "local"
        """))


def env_for(tree):
    env = dict(os.environ)
    # The dev venv's editable install puts the checkout on sys.path; the
    # copy must win so that the mutated file is the one imported.
    env["PYTHONPATH"] = str(tree)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def cosmic(args, tree, timeout=None):
    bindir = Path(sys.executable).parent
    return subprocess.run([str(bindir / args[0]), *args[1:]], cwd=tree,
                          env=env_for(tree), capture_output=True, text=True,
                          timeout=timeout)


def select(work_db, capacity):
    """Skip the operators outside KEEP_OPERATORS; sample down to capacity."""
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    kept, skipped = [], []
    for item in work_db.pending_work_items:
        m = item.mutations[0]
        (kept if KEEP_OPERATORS.match(m.operator_name) else skipped).append(item)
    if skipped:
        work_db.set_multiple_results(
            [i.job_id for i in skipped],
            WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output="operator not in set"))

    def key(item):
        m = item.mutations[0]
        return hashlib.sha1(f"{m.operator_name}:{m.occurrence}".encode()).hexdigest()

    kept.sort(key=key)
    unsampled = kept[capacity:]
    if unsampled:
        work_db.set_multiple_results(
            [i.job_id for i in unsampled],
            WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output="not sampled"))
    return len(kept), [i.job_id for i in unsampled]


def release(session, job_ids):
    """Put held-back mutants back in the queue (drop their "not sampled" mark)."""
    with sqlite3.connect(session) as db:
        db.executemany("DELETE FROM work_results WHERE job_id = ?", [(j,) for j in job_ids])


def tested(session):
    with sqlite3.connect(session) as db:
        return db.execute("SELECT count(*) FROM work_results "
                          "WHERE worker_outcome != 'SKIPPED'").fetchone()[0]


class Shares:
    """
    Hands each module, when it starts, its share of the worker time left:
    ``jobs`` workers until the run's deadline, less what the modules still
    running have claimed, split by weight among the modules not yet done.
    A module that finishes early leaves its time to the ones after it.
    """

    def __init__(self, specs, budget, jobs):
        self._lock = threading.Lock()
        self._deadline = time.monotonic() + budget
        self._jobs = jobs
        self._waiting = {m[0]: m[3] for m in specs}
        self._running = {}  # name -> deadline

    def claim(self, name):
        with self._lock:
            now = time.monotonic()
            weight = self._waiting.pop(name)
            others = sum(max(0.0, d - now) for d in self._running.values())
            free = self._jobs * max(0.0, self._deadline - now) - others
            share = max(60.0, free * weight / (weight + sum(self._waiting.values())))
            self._running[name] = now + share
            return share

    def done(self, name):
        with self._lock:
            self._running.pop(name, None)


def run_module(spec, base_tree, workdir, shares):
    name, module, tests, _share, timeout = spec
    tree = workdir / f"tree-{name}"
    shutil.copytree(base_tree, tree, symlinks=True)
    command = test_command(tests, tree)
    config = workdir / f"{name}.toml"
    session = workdir / f"{name}.sqlite"
    write_config(config, module, command, timeout)
    started = time.monotonic()
    seconds = shares.claim(name)
    try:
        return _run_module(name, module, command, tree, config, session, timeout,
                           started, seconds)
    finally:
        shares.done(name)


def _run_module(name, module, command, tree, config, session, timeout, started, seconds):
    from cosmic_ray.work_db import WorkDB, use_db

    # Baseline: the unmutated tests must pass, and their time sizes the sample.
    # Tried twice: the PostgreSQL-backed tests can trip once on a loaded box.
    for _ in range(2):
        t0 = time.monotonic()
        base = subprocess.run(command.split(), cwd=tree, env=env_for(tree),
                              capture_output=True, text=True)
        per_mutant = time.monotonic() - t0
        if base.returncode == 0:
            break
    if base.returncode != 0:
        return {"name": name, "module": module, "error":
                "baseline failed:\n" + (base.stdout + base.stderr)[-3000:]}

    r = cosmic(["cosmic-ray", "init", str(config), str(session), "--force"], tree)
    if r.returncode != 0:
        return {"name": name, "module": module, "error": "init failed:\n" + r.stderr[-3000:]}
    # Round one tests as many mutants as the baseline time says fit; then,
    # with the time per mutant measured (killed ones stop early), more of
    # the held-back ones are released, round after round, until the share is
    # used up.  The sample stays deterministic: always the next in one order.
    deadline = started + seconds
    capacity = max(1, int((deadline - time.monotonic()) / per_mutant))
    with use_db(str(session), WorkDB.Mode.open) as db:
        total, held = select(db, capacity)
    log(f"{name}: {total} mutants (tests {per_mutant:.1f}s unmutated, share {seconds:.0f}s)")
    bindir = Path(sys.executable).parent
    while True:
        t0, before = time.monotonic(), tested(session)
        proc = subprocess.Popen([str(bindir / "cosmic-ray"), "exec", str(config), str(session)],
                                cwd=tree, env=env_for(tree), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            # Safety net: whatever is still pending then is "not run".
            proc.wait(timeout=max(30.0, deadline - t0) + timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        each = (time.monotonic() - t0) / max(1, tested(session) - before)
        more = int(0.8 * (deadline - time.monotonic()) / each)
        if not held or more < 1:
            break
        release(session, held[:more])
        held = held[more:]
    # cosmic-ray left the file mutated if it was killed mid-mutant: irrelevant,
    # the copy is thrown away.
    return summarize(name, module, session, total, time.monotonic() - started)


def summarize(name, module, session, total, elapsed):
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    killed = survived = incompetent = timeouts = 0
    survivors = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        items = {i.job_id: i for i in db.work_items}
        for job_id, result in db.results:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            if result.worker_outcome != WorkerOutcome.NORMAL:
                incompetent += 1
                continue
            if result.test_outcome == TestOutcome.SURVIVED:
                survived += 1
                m = items[job_id].mutations[0]
                survivors.append({
                    "line": m.start_pos[0], "col": m.start_pos[1],
                    "operator": m.operator_name.removeprefix("core/"),
                    "occurrence": m.occurrence,
                    "diff": changed_lines(result.diff or ""),
                })
            elif result.test_outcome == TestOutcome.KILLED:
                killed += 1
                if result.output == "timeout":
                    timeouts += 1
            else:
                incompetent += 1
    survivors.sort(key=lambda s: (s["line"], s["col"], s["operator"]))
    for s in survivors:
        s["equivalent"] = equivalent(module, s)
    tested = killed + survived
    real = tested - sum(1 for s in survivors if s["equivalent"])
    return {"name": name, "module": module, "total": total, "tested": tested,
            "killed": killed, "survived": survived, "timeouts": timeouts,
            "incompetent": incompetent, "elapsed": elapsed,
            "rate": (100.0 * killed / tested) if tested else None,
            "rate_without_equivalent": (100.0 * killed / real) if real else None,
            "survivors": survivors}


def changed_lines(diff):
    minus = [l[1:].strip() for l in diff.splitlines()
             if l.startswith("-") and not l.startswith("---")]
    plus = [l[1:].strip() for l in diff.splitlines()
            if l.startswith("+") and not l.startswith("+++")]
    context = [l[1:].strip() for l in diff.splitlines() if l.startswith(" ")]
    return {"from": " / ".join(minus), "to": " / ".join(plus), "context": " / ".join(context)}


def report(results, elapsed):
    print()
    print(f"{'module':<34} {'killed':>7} {'tested':>7} {'of':>5} {'rate':>7} "
          f"{'equiv.':>6} {'rate w/o equiv.':>15}")
    for r in results:
        if "error" in r:
            print(f"{r['module']:<34} ERROR")
            continue

        def pct(x):
            return "-" if x is None else f"{x:.1f}%"

        eq = sum(1 for s in r["survivors"] if s["equivalent"])
        print(f"{r['module']:<34} {r['killed']:>7} {r['tested']:>7} {r['total']:>5} "
              f"{pct(r['rate']):>7} {eq:>6} {pct(r['rate_without_equivalent']):>15}")
    print(f"\nwall clock {elapsed / 60:.1f} min")
    for r in results:
        if "error" in r:
            print(f"\n== {r['module']}: {r['error']}")
            continue
        if not r["survivors"]:
            continue
        print(f"\n== survivors in {r['module']} ({len(r['survivors'])})")
        for s in r["survivors"]:
            mark = f"  [equivalent: {s['equivalent']}]" if s["equivalent"] else ""
            print(f"  {r['module']}:{s['line']}:{s['col']} {s['operator']}{mark}"
                  f"\n      - {s['diff']['from']}\n      + {s['diff']['to']}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="comma-separated module names: "
                   + ",".join(m[0] for m in MODULES))
    p.add_argument("--budget", type=float, default=1800.0,
                   help="wall-clock seconds for the whole run (default 1800)")
    p.add_argument("--jobs", type=int, default=2, help="modules in parallel (default 2)")
    p.add_argument("--workdir", help="where to copy the tree (default: a new dir in /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--working-tree", action="store_true",
                   help="test the working tree as it is, uncommitted changes included "
                        "(default: the committed HEAD)")
    p.add_argument("--json", help="also write the results as JSON to this file")
    args = p.parse_args(argv)

    specs = MODULES
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {m[0] for m in MODULES}
        if unknown:
            p.error(f"unknown module(s): {', '.join(sorted(unknown))}")
        specs = [m for m in MODULES if m[0] in wanted]

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="powerctl-mutate-", dir="/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    base_tree = workdir / "tree"
    if base_tree.exists():
        shutil.rmtree(base_tree)
    copy_tree(base_tree, args.working_tree)
    log(f"copied {'the working tree' if args.working_tree else 'HEAD'} to {base_tree}")

    # Shares of the budget, by weight, handed out as modules start; a little
    # is kept back for the timeouts and the report.
    shares = Shares(specs, args.budget * 0.95, max(1, args.jobs))
    started = time.monotonic()
    results = {}
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = {pool.submit(run_module, m, base_tree, workdir, shares): m
                       for m in specs}
            for f in concurrent.futures.as_completed(futures):
                r = f.result()
                results[r["name"]] = r
                if "error" in r:
                    log(f"{r['name']}: {r['error'].splitlines()[0]}")
                else:
                    rate = "-" if r["rate"] is None else f"{r['rate']:.1f}%"
                    log(f"{r['name']}: {r['killed']}/{r['tested']} killed ({rate}), "
                        f"{r['total']} mutants, {r['elapsed']:.0f}s")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    ordered = [results[m[0]] for m in specs if m[0] in results]
    elapsed = time.monotonic() - started
    report(ordered, elapsed)
    if args.json:
        Path(args.json).write_text(json.dumps(ordered, indent=1))
    return 1 if any("error" in r for r in ordered) else 0


if __name__ == "__main__":
    sys.exit(main())
