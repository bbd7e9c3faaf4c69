"""
The IPMI BMC simulator, seen from pyghmi's client (in the reactor's
threads) and from raw UDP: what tests and the demo rely on.
"""

import argparse

import attrs
from twisted.internet import defer, reactor, task, threads
from twisted.internet.protocol import DatagramProtocol
from twisted.trial import unittest

from powerctl.power import PowerState
from powerctl.sim import ipmi as sim
from powerctl.testing.waiting import until


def login(port, password=b"password", username=b"admin"):
    """A pyghmi session, in a thread (pyghmi blocks)."""
    from pyghmi.ipmi import command

    return threads.deferToThread(
        command.Command, bmc="127.0.0.1", userid=username, password=password, port=port
    )


def logout(cmd):
    return threads.deferToThread(cmd.ipmi_session.logout)


class ChannelAuthProbe(DatagramProtocol):
    """Sends one sessionless Get Channel Authentication Capabilities."""

    def __init__(self):
        self.answers = []

    def ask(self, port):
        message = bytes([0x20, 0x06 << 2, 0xC8, 0x81, 0x00, 0x38, 0x8E, 0x04])
        message = message[:-2] + message[-2:] + bytes([(-sum(message[3:])) & 0xFF])
        packet = sim.RMCP_HEADER + b"\x00" + b"\x00" * 8 + bytes([len(message)]) + message
        self.transport.write(packet, ("127.0.0.1", port))

    def datagramReceived(self, data, address):
        self.answers.append(data)


class SimulatorTests(unittest.TestCase):
    def setUp(self):
        self.sim = sim.start(reactor, {"latency": 0.002})
        self.addCleanup(self.sim.stop)
        self.bmc = self.sim.bmc()

    async def test_pyghmi_session_and_power(self):
        cmd = await login(self.sim.port)
        self.assertEqual(self.bmc.logins, 1)
        self.assertEqual(self.bmc.suites_used, [17])
        state = await threads.deferToThread(cmd.get_power)
        self.assertEqual(state["powerstate"], "off")
        await threads.deferToThread(cmd.set_power, "on")
        self.assertEqual(self.bmc.power, PowerState.ON)
        self.assertEqual(self.sim.state, {self.sim.port: "on"})
        await logout(cmd)
        self.assertEqual(self.bmc.sessions, {})

    async def test_refuses_suite_17_when_told(self):
        """pyghmi proposes 17 first; a 3-only BMC answers 0x11 and it falls back."""
        self.bmc.suites = (3,)
        cmd = await login(self.sim.port)
        self.assertEqual(self.bmc.suites_used, [3])
        await logout(cmd)

    async def test_wrong_credentials_refused(self):
        from pyghmi.exceptions import IpmiException

        e = await self.assertFailure(login(self.sim.port, password=b"nope"), IpmiException)
        self.assertIn("password", str(e))
        e = await self.assertFailure(login(self.sim.port, username=b"eve"), IpmiException)
        self.assertIn("Unauthorized name", str(e))
        self.assertEqual(self.bmc.logins, 0)
        self.assertGreaterEqual(self.bmc.refused_logins, 1)  # pyghmi retries as operator

    async def test_switch_delay(self):
        self.bmc.switch_delay = 0.1
        self.bmc._chassis_control(b"\x01")
        self.assertEqual(self.bmc.power, PowerState.OFF)
        await task.deferLater(reactor, 0.15, lambda: None)
        self.assertEqual(self.bmc.power, PowerState.ON)

    def test_cycle_and_soft_off(self):
        self.bmc.power = PowerState.ON
        self.bmc._chassis_control(b"\x02")
        self.assertEqual(self.bmc.power, PowerState.ON)
        self.bmc._chassis_control(b"\x05")
        self.assertEqual(self.bmc.power, PowerState.OFF)
        self.assertEqual(self.bmc._chassis_control(b"\x09")[0], sim.CC_INVALID_DATA)

    async def probe(self, port, count=1):
        probe = ChannelAuthProbe()
        listener = reactor.listenUDP(0, probe, interface="127.0.0.1")
        try:
            for _ in range(count):
                probe.ask(port)
            await task.deferLater(reactor, 0.1, lambda: None)
        finally:
            await listener.stopListening()
        return probe.answers

    async def test_channel_auth_capabilities(self):
        answers = await self.probe(self.sim.port)
        self.assertEqual(len(answers), 1)
        data = answers[0][14:]
        self.assertEqual(data[5], 0x38)  # command
        self.assertEqual(data[6], 0)  # completion code
        self.assertTrue(data[8] & 0x80 and data[10] & 0x02)  # IPMI 2.0

    async def test_hang_answers_nothing(self):
        self.bmc.faults = sim.Faults(hang=True)
        self.assertEqual(await self.probe(self.sim.port), [])

    async def test_drop_fraction(self):
        self.bmc.faults = sim.Faults(drop=0.5)
        self.bmc.rng.seed(7)
        answers = await self.probe(self.sim.port, count=60)
        self.assertTrue(15 <= len(answers) <= 45, len(answers))

    async def test_latency(self):
        self.bmc.faults = sim.Faults(latency=0.05)
        self.bmc.clock = clock = task.Clock()  # the BMC's timers: the test's from now on
        probe = ChannelAuthProbe()
        listener = reactor.listenUDP(0, probe, interface="127.0.0.1")
        self.addCleanup(listener.stopListening)
        probe.ask(self.sim.port)
        await until(lambda: self.bmc.in_flight, what="the answer to be scheduled")
        clock.advance(0.049)
        self.assertEqual(self.bmc.in_flight, 1)  # not answered a tick early
        clock.advance(0.001)
        self.assertEqual(self.bmc.in_flight, 0)
        await until(lambda: probe.answers, what="the answer to arrive")

    async def test_error_fault(self):
        self.bmc.faults = sim.Faults(error=0xC0)
        cmd = await login(self.sim.port)
        from pyghmi.exceptions import IpmiException

        e = await self.assertFailure(threads.deferToThread(cmd.get_power), IpmiException)
        self.assertIn("Busy", str(e))
        await logout(cmd)

    async def test_stop_cancels_timers(self):
        self.bmc.switch_delay = 5
        self.bmc.faults = sim.Faults(latency=5)
        self.bmc._chassis_control(b"\x01")
        await self.probe(self.sim.port)
        await self.sim.stop()  # trial fails the test if a DelayedCall is left


class ManyTests(unittest.TestCase):
    async def test_hundred_bmcs_in_one_process(self):
        many = sim.start(reactor, {"count": 100})
        self.addCleanup(many.stop)
        self.assertEqual(len(set(many.ports)), 100)
        self.assertEqual(set(many.state.values()), {"off"})
        # One login at a time: concurrent pyghmi logins can stall for seconds
        # (see bench/ipmi_many_bmcs.py); this test is about the simulator.
        cmds = [await login(p) for p in many.ports[:5]]
        self.assertEqual([many.bmc(p).logins for p in many.ports[:6]], [1, 1, 1, 1, 1, 0])
        await defer.gatherResults([logout(c) for c in cmds])

    async def test_cli_options(self):
        parser = sim.add_arguments(argparse.ArgumentParser())
        options = parser.parse_args(["--count", "2", "--power", "on", "--error", "0xc0",
                                     "--suites", "3", "--switch-delay", "0.5"])
        many = sim.start(reactor, options)
        self.addCleanup(many.stop)
        self.assertEqual(len(many.ports), 2)
        self.assertEqual(many.bmc().faults.error, 0xC0)
        self.assertEqual(many.bmc().suites, (3,))
        self.assertEqual(many.state, {p: "on" for p in many.ports})
        self.assertRaises(ValueError, sim.start, reactor, {"suites": "2"})

    def test_faults_are_values(self):
        faults = sim.Faults()
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, faults, "hang", True)
