"""
Many simulators in one child process, so that they do not share the CPU
(nor the GIL) of the process being measured: ``snmp`` PDUs or ``redfish``
services from :mod:`powerctl.sim`, on loopback.  Announces itself with one
JSON line on stdout (ports or URLs) and runs until its stdin closes (the
parent exited or closed it).

    python bench/simhost.py snmp --pdus 200 --outlets 50
    python bench/simhost.py redfish --services 100 --systems 100 --delay 0.2
"""

import argparse
import json
import sys

from twisted.internet import asyncioreactor

asyncioreactor.install()

from twisted.internet import defer, reactor, stdio  # noqa: E402
from twisted.internet.protocol import Protocol  # noqa: E402


class _UntilEOF(Protocol):
    def __init__(self, done):
        self.done = done

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.callback(None)


async def main(args):
    sims = []
    if args.kind == "snmp":
        from powerctl.sim import snmp

        for _ in range(args.pdus):
            sims.append(await snmp.start(reactor, snmp.SimOptions(
                family="apc-rpdu", outlets=args.outlets, initial="on")))
        info = {"ports": [s.port for s in sims]}
    else:
        from powerctl.sim.redfish import RedfishSimulator, make_systems

        for _ in range(args.services):
            sims.append(RedfishSimulator(reactor, make_systems(args.systems, "s"),
                                         username="u", password="p", delay=args.delay).start())
        info = {"urls": [s.url for s in sims]}
    print(json.dumps(info), flush=True)
    done = defer.Deferred()
    stdio.StandardIO(_UntilEOF(done))
    await done
    for s in sims:
        await defer.maybeDeferred(s.stop)


def run():
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=("snmp", "redfish"))
    p.add_argument("--pdus", type=int, default=200)
    p.add_argument("--outlets", type=int, default=50)
    p.add_argument("--services", type=int, default=100)
    p.add_argument("--systems", type=int, default=100)
    p.add_argument("--delay", type=float, default=0.0)
    args = p.parse_args()
    d = defer.ensureDeferred(main(args))
    d.addErrback(lambda f: print(f.getTraceback(), file=sys.stderr))
    d.addBoth(lambda _: reactor.stop())
    reactor.run()


if __name__ == "__main__":
    run()
