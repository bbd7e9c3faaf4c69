"""
The scale model's figures (issue 14; docs/scale.rst): the real region and
pservs in memory on a ``Clock`` (``powerctl.testing.scalemodel``), with
``--pservs`` pservs of ``--nodes`` nodes each (10 x 10,000 by default),
counting the journal's write transactions for

* one poll round of every pserv, and
* a power storm: every node switched on at once.

and deriving what PostgreSQL sees at a given poll interval.  No sockets,
no database: the counts are what the code asks the store for, and each
counted call is one transaction on the real store.  About three minutes
at the default size on a 2-core machine.

    .venv/bin/python bench/scale_model.py [--pservs 10] [--nodes 10000]
        [--poll-interval 60]

Prints figures; asserts nothing.
"""

import argparse
import time

from powerctl.testing.scalemodel import Fleet


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pservs", type=int, default=10)
    p.add_argument("--nodes", type=int, default=10_000, help="nodes per pserv")
    p.add_argument("--poll-interval", type=float, default=60.0)
    args = p.parse_args()
    total = args.pservs * args.nodes
    started = time.monotonic()
    fleet = Fleet(args.pservs, args.nodes)
    connected = time.monotonic()
    poll = fleet.poll_round()
    polled = time.monotonic()
    storm = fleet.storm("on")
    stormed = time.monotonic()
    poll_tx = sum(poll.values())
    storm_tx = sum(storm.values())
    print(f"fleet: {args.pservs} pservs x {args.nodes} nodes = {total} nodes (in memory)")
    print(f"simulated in {stormed - started:.0f} s: connect {connected - started:.0f} s,"
          f" poll round {polled - connected:.0f} s, storm {stormed - polled:.0f} s")
    print()
    print(f"{'figure':58} {'value':>12}")
    rows = [
        ("write transactions per poll round", poll_tx),
        ("  per 10,000 nodes", poll_tx * 10_000 / total),
        (f"  per second at a {args.poll_interval:g} s poll interval",
         poll_tx / args.poll_interval),
        ("write transactions per power storm (every node on)", storm_tx),
        ("  per node", storm_tx / total),
        ("journal rows added per storm (one operation per node)", fleet.states().total()),
    ] + [(f"  {name}", count) for name, count in sorted(storm.items())]
    for name, value in rows:
        print(f"{name:58} {value:>12,.1f}" if isinstance(value, float)
              else f"{name:58} {value:>12,}")


if __name__ == "__main__":
    main()
