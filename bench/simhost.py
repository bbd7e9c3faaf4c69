"""
Many simulators in one child process, so that they do not share the CPU
(nor the GIL) of the process being measured: ``snmp`` PDUs or ``redfish``
services from :mod:`powerctl.sim`, on loopback.  Announces itself with one
JSON line on stdout (ports or URLs) and runs until its stdin closes (the
parent exited or closed it).

``snmp --light`` serves the PDUs with :class:`LightPdu` instead of
pysnmp's agent: GETs of the family's status column only, answered through
:mod:`powerctl.drivers.snmp_ber`.  Once the driver stopped using pysnmp
for polls, 200 pysnmp agents in one process became the bench's bottleneck
on a 2-core machine (about 10 ms of CPU per 50-outlet GET, more than the
pserv spent); a real PDU answers on its own hardware.  The driver is
tested against the pysnmp agent (tests/test_snmp_driver.py), so the light
one is only a load generator.

    python bench/simhost.py snmp --pdus 200 --outlets 50 [--light]
    python bench/simhost.py redfish --services 100 --systems 100 --delay 0.2
"""

import argparse
import asyncio
import json
import sys

from twisted.internet import asyncioreactor

asyncioreactor.install()

from twisted.internet import defer, reactor, stdio  # noqa: E402
from twisted.internet.protocol import Protocol  # noqa: E402


class LightPdu(asyncio.DatagramProtocol):
    """
    One PDU of ``family`` with ``outlets`` outlets, all ``on``, read-only:
    answers v1/v2c GETs with the right ``community``; an OID it does not
    serve is noSuchInstance (v2c) or noSuchName (v1); anything else is
    dropped, as an agent drops what it cannot parse.
    """

    def __init__(self, family, outlets, community=b"public"):
        from powerctl.drivers import snmp_ber, snmp_families
        from powerctl.power import PowerState

        self.ber = snmp_ber
        fam = snmp_families.get(family)
        raw = fam.raw_of(PowerState.ON)
        self.values = {fam.status_instance(1, n): raw for n in range(1, outlets + 1)}
        self.community = community
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, address):
        ber = self.ber
        try:
            version, community, request_id, oids = ber.decode_get(data)
        except ber.BerError:
            return
        if community != self.community or version not in (0, 1):
            return
        var_binds, status, index = [], 0, 0
        for i, oid in enumerate(oids):
            value = self.values.get(oid, ber.NO_SUCH_INSTANCE)
            if value is ber.NO_SUCH_INSTANCE and version == 0 and not status:
                status, index = 2, i + 1  # v1: noSuchName, the request's variables echoed
            var_binds.append((ber.encode_oid(oid), value))
        if status:
            var_binds = [(code, 0) for code, _ in var_binds]
        self.transport.sendto(ber.encode_response(version, community, request_id, var_binds,
                                                  status, index), address)


async def light_pdus(count, outlets):
    """``count`` :class:`LightPdu` on 127.0.0.1: ``(ports, closers)``."""
    loop = asyncio.get_running_loop()
    ports, transports = [], []
    for _ in range(count):
        transport, _ = await loop.create_datagram_endpoint(
            lambda: LightPdu("apc-rpdu", outlets), local_addr=("127.0.0.1", 0))
        transports.append(transport)
        ports.append(transport.get_extra_info("sockname")[1])
    return ports, transports


class _UntilEOF(Protocol):
    def __init__(self, done):
        self.done = done

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.callback(None)


async def main(args):
    sims = []
    if args.kind == "snmp" and args.light:
        ports, transports = await defer.Deferred.fromFuture(asyncio.ensure_future(
            light_pdus(args.pdus, args.outlets)))
        stops = [t.close for t in transports]
        info = {"ports": ports, "sim": "light"}
    elif args.kind == "snmp":
        from powerctl.sim import snmp

        for _ in range(args.pdus):
            sims.append(await snmp.start(reactor, snmp.SimOptions(
                family="apc-rpdu", outlets=args.outlets, initial="on")))
        info = {"ports": [s.port for s in sims], "sim": "pysnmp"}
        stops = [s.stop for s in sims]
    else:
        from powerctl.sim.redfish import RedfishSimulator, make_systems

        for _ in range(args.services):
            sims.append(RedfishSimulator(reactor, make_systems(args.systems, "s"),
                                         username="u", password="p", delay=args.delay).start())
        info = {"urls": [s.url for s in sims]}
        stops = [s.stop for s in sims]
    print(json.dumps(info), flush=True)
    done = defer.Deferred()
    stdio.StandardIO(_UntilEOF(done))
    await done
    for stop in stops:
        await defer.maybeDeferred(stop)


def run():
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=("snmp", "redfish"))
    p.add_argument("--pdus", type=int, default=200)
    p.add_argument("--outlets", type=int, default=50)
    p.add_argument("--services", type=int, default=100)
    p.add_argument("--systems", type=int, default=100)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--light", action="store_true",
                   help="snmp: light PDUs (status GETs only, no pysnmp), see the module doc")
    args = p.parse_args()
    d = defer.ensureDeferred(main(args))
    d.addErrback(lambda f: print(f.getTraceback(), file=sys.stderr))
    d.addBoth(lambda _: reactor.stop())
    reactor.run()


if __name__ == "__main__":
    run()
