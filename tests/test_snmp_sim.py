"""
The simulated PDU itself: options, state exposure, access control,
switching delay, faults, and a clean stop.
"""

import argparse

from twisted.internet import reactor, task
from twisted.trial import unittest

from powerctl.drivers.base import Command, sleep
from powerctl.drivers.snmp import _bridge
from powerctl.power import PowerState
from powerctl.sim import snmp as simsnmp
from powerctl.testing.waiting import until
from tests.test_snmp_driver import SimMixin, inline, open_fds


class OptionsTests(unittest.TestCase):
    def test_initial_states(self):
        o = simsnmp.SimOptions(outlets=3, initial="on,off,on")
        self.assertEqual(o.initial_states(),
                         {1: PowerState.ON, 2: PowerState.OFF, 3: PowerState.ON})
        self.assertRaises(ValueError, simsnmp.SimOptions(outlets=2, initial="on,on,on").initial_states)

    def test_bad_family_or_fault(self):
        self.assertRaises(ValueError, simsnmp.SimOptions, family="nope")
        self.assertRaises(ValueError, simsnmp.SimOptions, fault="explode")

    def test_argparse(self):
        parser = simsnmp.add_arguments(argparse.ArgumentParser())
        args = parser.parse_args(["--family", "eaton-epdu", "--outlets", "24", "--fault", "drop",
                                  "--latency", "0.2", "--write-community", "rw"])
        o = simsnmp.options_from_args(args)
        self.assertEqual((o.family, o.outlets, o.fault, o.latency, o.write_community),
                         ("eaton-epdu", 24, "drop", 0.2, "rw"))


class SimTests(SimMixin, unittest.TestCase):
    @inline
    async def test_port_zero_is_resolved(self):
        sim = await self.sim()
        self.assertGreater(sim.port, 0)

    @inline
    async def test_stop_closes_socket_and_timers(self):
        sim = await self.sim(switch_delay=5.0, latency=0.0)
        await self.driver(sim).query()
        await self.driver(sim).send(Command.ON)  # the driver's sockets are open now
        fds = open_fds()
        self.assertEqual(len(sim._timers), 1)
        await sim.stop()
        self.assertEqual(open_fds(), fds - 1)
        self.assertFalse([c for c in reactor.getDelayedCalls() if c in sim._timers])
        self.assertEqual(sim._timers, set())

    @inline
    async def test_switch_delay(self):
        sim = await self.sim(switch_delay=0.2)
        drv = self.driver(sim)
        await drv.send(Command.ON)
        self.assertEqual(sim.outlets[1], PowerState.OFF)
        await sleep(reactor, 0.3)
        self.assertEqual(sim.outlets[1], PowerState.ON)

    @inline
    async def test_latency(self):
        sim = await self.sim(latency=0.2)
        sim.reactor = clock = task.Clock()  # the simulator's timers: the test's from now on
        d = self.driver(sim, timeout=1.0).query()
        await until(clock.getDelayedCalls, what="the answer to be scheduled")
        clock.advance(0.199)
        self.assertEqual(len(sim._timers), 1)  # not answered a tick early
        clock.advance(0.001)
        self.assertEqual(sim._timers, set())
        self.assertEqual(await d, PowerState.OFF)

    @inline
    async def test_eaton_delay_value(self):
        sim = await self.sim(family="eaton-epdu", outlets=2)
        drv = self.driver(sim, outlet=2)
        fam = sim.family
        await _bridge(self.driver_type.set(drv.target, fam.command_instance(fam.on, 1, 2), 1))
        self.assertEqual(sim.outlets[2], PowerState.OFF)  # 1 s delay requested
        await _bridge(self.driver_type.set(drv.target, fam.command_instance(fam.on, 1, 2), 0))
        self.assertEqual(sim.outlets[2], PowerState.ON)

    @inline
    async def test_fault_can_change_at_run_time(self):
        sim = await self.sim()
        sim.fault = "error"
        from powerctl.drivers.errors import ProtocolError

        with self.assertRaises(ProtocolError):
            await self.driver(sim).query()
        sim.fault = "none"
        self.assertEqual(await self.driver(sim).query(), PowerState.OFF)
