"""
Wall time of ``powerctl driver <op>`` as an operator runs it -- a new
process per operation, interpreter start and imports included -- against
the protocols' standard peers (:mod:`tests.peers`): ipmi_sim, net-snmp
snmpd (APC rPDU), sushy-tools (fake driver: a change lands 1-11 s after
the request, so its figures measure the emulator more than us).

Each round, per peer, from an ``off`` device:
query (off), on (off -> on), cycle (on -> off -> on), off (on -> off),
then, where the driver has a graceful shutdown, an untimed ``on`` and
soft-off (on -> off).  ipmi_sim has no graceful shutdown behind its
chassis script, so IPMI soft-off measures the fall-back: half of
``--soft-timeout`` waiting, then a hard off.  SNMP PDUs have no soft-off
(the command exits 7, unsupported; run once to show it).

A baseline row, ``powerctl driver list``, is the cost of the process alone.
Missing peers are listed, not fatal.  Loopback only; every command is
bounded by ``--timeout`` (and killed 15 s after that).

    .venv/bin/python bench/driver_cli_peers.py [--rounds 3] [--only ipmi,snmp,redfish]
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import peers  # noqa: E402

OPERATIONS = ("query", "on", "cycle", "off", "soft-off")
SOFT_OFF = {"ipmi": True, "redfish": True, "snmp": False}


def run(label, samples, failures, args, timeout, expect=None):
    """One timed ``powerctl`` run; records seconds and status, and any failure
    (a non-zero exit or printing something else than ``expect``)."""
    try:
        bound = ["--timeout", f"{timeout:g}"] if args[1] != "list" else []
        status, out, err, elapsed = peers.run_cli([*args, *bound], timeout=timeout + 15)
    except Exception as e:  # noqa: BLE001 -- a bench reports, it does not stop
        failures.setdefault(label, []).append(f"{type(e).__name__}: {e}")
        return
    samples.setdefault(label, []).append((elapsed, status))
    if status != 0:
        failures.setdefault(label, []).append(f"exit {status}: {err.strip()[:160]}")
    elif expect is not None and out != expect + "\n":
        failures.setdefault(label, []).append(f"printed {out!r}, expected {expect!r}")


def bench_peer(peer, rounds, timeout, soft_timeout, samples, failures):
    name = peer.name
    base = peer.cli_args()
    expect = {"query": "off", "on": "on", "cycle": "on", "off": "off"}
    for _ in range(rounds):
        for op in ("query", "on", "cycle", "off"):
            run((name, op), samples, failures, ["driver", op, *base], timeout, expect[op])
        if SOFT_OFF[name]:
            run((name, "(setup on)"), {}, failures, ["driver", "on", *base], timeout, "on")
            run((name, "soft-off"), samples, failures, ["driver", "soft-off", *base],
                soft_timeout if name == "ipmi" else timeout, "off")
    if not SOFT_OFF[name]:
        # Not meaningful to time: show once what the operator gets.
        run((name, "soft-off"), samples, {}, ["driver", "soft-off", *base], timeout)


def table(samples, failures, order):
    rows = [("DRIVER", "OPERATION", "N", "MIN s", "MEDIAN s", "MAX s", "EXIT")]
    for key in order:
        if key not in samples:
            continue
        times = [t for t, _ in samples[key]]
        codes = sorted({s for _, s in samples[key]})
        rows.append((key[0], key[1], str(len(times)), f"{min(times):.2f}",
                     f"{statistics.median(times):.2f}", f"{max(times):.2f}",
                     ",".join(map(str, codes))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs of each operation (3)")
    parser.add_argument("--only", default="", help="comma-separated peers: ipmi,snmp,redfish")
    parser.add_argument("--timeout", type=float, default=20.0,
                        help="powerctl --timeout for ipmi/snmp (20 s)")
    parser.add_argument("--redfish-timeout", type=float, default=40.0,
                        help="powerctl --timeout for redfish (40 s; the fake driver takes 1-11 s)")
    parser.add_argument("--soft-timeout", type=float, default=6.0,
                        help="powerctl --timeout for IPMI soft-off; half of it is the graceful "
                             "wait before the hard off (6 s)")
    parser.add_argument("--json", action="store_true", help="also print the samples as JSON")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds must be 1..20")

    wanted = {w for w in args.only.split(",") if w}
    ok, missing = peers.available()
    ok = [cls for cls in ok if not wanted or cls.name in wanted]
    samples, failures, order = {}, {}, []

    for _ in range(args.rounds):
        run(("(process)", "driver list"), samples, failures, ["driver", "list"], 10)
    order.append(("(process)", "driver list"))

    started_all = time.monotonic()
    for cls in ok:
        peer = cls()
        t0 = time.monotonic()
        try:
            peer.start()
        except Exception as e:  # noqa: BLE001
            missing[cls.name] = f"failed to start: {e}"
            continue
        print(f"{peer.name}: peer up in {time.monotonic() - t0:.2f}s "
              f"({' '.join(peer.cli_args()[:2])}, port {peer.port})", flush=True)
        try:
            timeout = args.redfish_timeout if peer.name == "redfish" else args.timeout
            bench_peer(peer, args.rounds, timeout, args.soft_timeout, samples, failures)
        finally:
            peer.stop()
        order += [(peer.name, op) for op in OPERATIONS]

    print(f"powerctl driver <op> as a subprocess, loopback, {args.rounds} round(s), "
          f"{time.monotonic() - started_all:.0f}s total; wall time incl. process start")
    print(table(samples, failures, order))
    notes = {"ipmi": f"soft-off: ipmi_sim has no graceful shutdown; graceful wait "
                     f"{args.soft_timeout / 2:g}s then hard off",
             "snmp": "soft-off: unsupported by PDUs (exit 7), run once",
             "redfish": "sushy fake driver applies each change after a random 1-11 s"}
    for cls in ok:
        print(f"  note {cls.name}: {notes[cls.name]}")
    for name, reason in missing.items():
        if not wanted or name in wanted:
            print(f"  missing {name}: {reason}")
    for key, messages in failures.items():
        print(f"  FAILED {key[0]} {key[1]}: {len(messages)}x, e.g. {messages[0]}")
    if args.json:
        print(json.dumps({f"{k[0]} {k[1]}": [[round(t, 3), s] for t, s in v]
                          for k, v in samples.items()}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
