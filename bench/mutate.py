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
(default 1800) with ``--jobs`` modules in parallel (default 2).  Each module
gets a share of that; when it has more mutants than its share can test (the
PostgreSQL-backed region modules do), a deterministic sample is tested and
the report says "tested N of M".  A mutant whose tests run past
``timeout`` seconds counts as killed (it hung).

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
import subprocess
import sys
import tempfile
import textwrap
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
REGISTRY_TESTS = ["tests/test_registry.py", "tests/test_registry_edges.py",
                  "tests/test_registry_properties.py", "tests/test_pserv_core.py"]
PSERV_TESTS = ["tests/test_pserv_core.py", "tests/test_pserv_edges.py",
               "tests/test_executor.py", "tests/test_executor_edges.py", "tests/test_rpc.py"]
# The region's own edge tests need no database and go first.
REGION_TESTS = ["tests/test_region_edges.py", "tests/test_store.py", "tests/test_rpc.py",
                "tests/test_lifecycle.py"]
MODULES = [
    ("pserv_core", "powerctl/pserv/core.py", PSERV_TESTS, 7, 60),
    ("store", "powerctl/region/store.py", REGION_TESTS, 6, 120),
    ("registry", "powerctl/registry/registry.py", REGISTRY_TESTS, 5, 60),
    ("executor", "powerctl/pserv/executor.py", PSERV_TESTS, 4, 60),
    ("region_core", "powerctl/region/core.py",
     ["tests/test_region_core_edges.py", "tests/test_lifecycle.py", "tests/test_rpc.py",
      "tests/test_store.py"], 3, 120),
    ("region_rpc", "powerctl/region/rpc.py",
     ["tests/test_region_edges.py", "tests/test_rpc.py", "tests/test_lifecycle.py",
      "tests/test_store.py"], 3, 120),
    ("slots", "powerctl/pserv/slots.py",
     ["tests/test_slots.py", "tests/test_slots_edges.py"], 2, 30),
    ("multiagent", "powerctl/drivers/multiagent.py",
     ["tests/test_multiagent.py", "tests/test_multiagent_edges.py"], 1.5, 30),
    ("base", "powerctl/drivers/base.py",
     ["tests/test_base_driver.py", "tests/test_base_driver_edges.py"], 1.5, 30),
    ("policy", "powerctl/registry/policy.py", REGISTRY_TESTS, 1, 60),
    ("actions", "powerctl/registry/actions.py", REGISTRY_TESTS, 1, 60),
]

# A killed mutant usually stops at its first failing test, well before the
# whole baseline; sizing the sample on 60 % of the baseline fills the share
# better (the hard limit below still bounds a module that runs over).
EXPECTED_FRACTION = 0.6

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
    return len(kept)


def run_module(spec, base_tree, workdir, seconds):
    name, module, tests, _share, timeout = spec
    from cosmic_ray.work_db import WorkDB, use_db

    tree = workdir / f"tree-{name}"
    shutil.copytree(base_tree, tree, symlinks=True)
    command = test_command(tests, tree)
    config = workdir / f"{name}.toml"
    session = workdir / f"{name}.sqlite"
    write_config(config, module, command, timeout)
    started = time.monotonic()

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
    left = seconds - (time.monotonic() - started)
    capacity = max(1, int(left / (per_mutant * EXPECTED_FRACTION)))
    with use_db(str(session), WorkDB.Mode.open) as db:
        total = select(db, capacity)
    log(f"{name}: {total} mutants, testing {min(total, capacity)} "
        f"(tests {per_mutant:.1f}s each, share {seconds:.0f}s)")

    # Safety net: whatever is still pending after the hard limit is "not run".
    hard = max(60.0, left * 1.3 + 2 * timeout)
    bindir = Path(sys.executable).parent
    proc = subprocess.Popen([str(bindir / "cosmic-ray"), "exec", str(config), str(session)],
                            cwd=tree, env=env_for(tree), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=hard)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
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
    tested = killed + survived
    return {"name": name, "module": module, "total": total, "tested": tested,
            "killed": killed, "survived": survived, "timeouts": timeouts,
            "incompetent": incompetent, "elapsed": elapsed,
            "rate": (100.0 * killed / tested) if tested else None,
            "survivors": survivors}


def changed_lines(diff):
    minus = [l[1:].strip() for l in diff.splitlines()
             if l.startswith("-") and not l.startswith("---")]
    plus = [l[1:].strip() for l in diff.splitlines()
            if l.startswith("+") and not l.startswith("+++")]
    return {"from": " / ".join(minus), "to": " / ".join(plus)}


def report(results, elapsed):
    print()
    print(f"{'module':<34} {'killed':>7} {'tested':>7} {'of':>5} {'rate':>7}")
    for r in results:
        if "error" in r:
            print(f"{r['module']:<34} ERROR")
            continue
        rate = "-" if r["rate"] is None else f"{r['rate']:.1f}%"
        print(f"{r['module']:<34} {r['killed']:>7} {r['tested']:>7} {r['total']:>5} {rate:>7}")
    print(f"\nwall clock {elapsed / 60:.1f} min")
    for r in results:
        if "error" in r:
            print(f"\n== {r['module']}: {r['error']}")
            continue
        if not r["survivors"]:
            continue
        print(f"\n== survivors in {r['module']} ({len(r['survivors'])})")
        for s in r["survivors"]:
            print(f"  {r['module']}:{s['line']}:{s['col']} {s['operator']}"
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

    # Each module's share of the jobs x budget worker-seconds, by weight.
    worker_seconds = args.budget * max(1, args.jobs) * 0.9
    weight = sum(m[3] for m in specs)
    started = time.monotonic()
    results = {}
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = {pool.submit(run_module, m, base_tree, workdir,
                                   worker_seconds * m[3] / weight): m for m in specs}
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
