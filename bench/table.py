"""
``make bench``: every row of issue 14's table in one run, printed as one
table -- figure, baseline measured in the same run, powerctl's figure,
ratio, target, pass/fail -- with the date, the machine and its load.

Runs bench/api.py (the REST API rows) and bench/rows.py (the pserv rows)
one after the other, each in a process of its own, with ``--json``;
arguments after ``--`` go to bench/rows.py (sizes: see its ``--help``).
Each part is bounded by ``--part-timeout``; a part that fails or times out
shows as a failed row and the others still print.

    .venv/bin/python bench/table.py [--api-args "--requests 2000"] [-- --only snmp]

Asserts nothing; the exit status is 0 whatever the figures.
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def machine():
    """One line: CPUs, memory, Python, kernel and the load average now."""
    cpus = os.cpu_count()
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) / 1024 / 1024
    except (OSError, ValueError, IndexError):
        mem = 0
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{cpus} CPU ({model or platform.processor()}), {mem:.0f} GiB, "
            f"Python {platform.python_version()}, Linux {platform.release()}; load {load}")


def run_part(name, argv, timeout):
    """The JSON rows a part printed (a failed row if it failed)."""
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, *argv], stdout=subprocess.PIPE, text=True,
                              timeout=timeout)
        out, code = done.stdout, done.returncode
    except subprocess.TimeoutExpired as e:
        out, code = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) \
            else (e.stdout or ""), "timeout"
    rows = []
    for line in out.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    if code != 0 or not rows:
        rows.append({"figure": f"{name}: exit {code}", "baseline": 0.0, "value": 0.0,
                     "ratio": 0.0, "target": "", "ok": False, "note": ""})
    print(f"[{name}: {time.monotonic() - started:.0f} s, load "
          f"{os.getloadavg()[0]:.2f}]", file=sys.stderr, flush=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--api-args", default="", help="extra arguments of bench/api.py")
    p.add_argument("--part-timeout", type=float, default=560)
    p.add_argument("rows_args", nargs=argparse.REMAINDER,
                   help="after --: arguments of bench/rows.py")
    args = p.parse_args()
    rows_args = [a for a in args.rows_args if a != "--"]
    started = time.monotonic()
    head = (f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
            f"{machine()}")
    rows = run_part("api", [os.path.join(HERE, "api.py"), "--json",
                            *shlex.split(args.api_args)], args.part_timeout)
    rows += run_part("pserv rows", [os.path.join(HERE, "rows.py"), "--json", *rows_args],
                     args.part_timeout)
    print(head)
    print(f"{'figure':62} {'baseline':>9} {'powerctl':>9} {'ratio':>6}  {'target':10} ok")
    for r in rows:
        print(f"{r['figure'][:62]:62} {r['baseline']:9.2f} {r['value']:9.2f} "
              f"{r['ratio']:6.2f}  {r['target']:10} {'yes' if r['ok'] else 'NO'}")
    print("ratio: powerctl as a share of the baseline, >= 1 is as good: baseline/powerctl"
          " for times and memory, powerctl/baseline for rates")
    for r in rows:
        if r.get("note"):
            print(f"  {r['figure']}: {r['note']}")
    print(f"{sum(1 for r in rows if r['ok'])} of {len(rows)} rows meet their target; "
          f"{time.monotonic() - started:.0f} s in all; load now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
