"""
``powerctl driver ...`` -- the operator's fence-agent-style command -- run as
a real subprocess (``.venv/bin/powerctl``) against the protocols' standard
peers (:mod:`tests.peers`): ipmi_sim, net-snmp snmpd, sushy-tools.

Each check asserts what a script relies on: stdout exactly ``on``/``off``
and exit 0, or nothing on stdout, exactly one ``error (<kind>): ...`` line
on stderr, the documented exit status, and no secret anywhere in the
output.  The peer's own state is read back independently (ipmi_sim's power
file, a raw SNMP GET, the emulator's REST resource), so a command that
printed ``on`` without changing anything would fail.

Peers and commands run in threads (``deferToThread``), never blocking the
reactor.  A missing peer skips its class with the reason.  The sushy fake
driver applies a change 1-11 s after the request, so the Redfish class
runs only query, one ``on`` (``--timeout 40``) and the failure case.
"""

import re

from twisted.internet import threads
from twisted.trial import unittest

from tests import peers

ERROR_LINE = re.compile(r"^error \((?P<kind>[a-z]+)\): \S.*\n\Z")


class _CliPeerMixin:
    peer_class = None
    #: Bound on every command's own wall time; the process gets a little more.
    cli_timeout = 20.0

    async def start_peer(self):
        self.peer = self.peer_class()
        await threads.deferToThread(self.peer.start)
        self.addCleanup(threads.deferToThread, self.peer.stop)

    async def cli(self, action, *extra, timeout=None, **overrides):
        """Run ``powerctl driver <action>`` against the peer: (status, out, err, s)."""
        timeout = timeout or self.cli_timeout
        args = ["driver", action, *self.peer.cli_args(**overrides), "--timeout", f"{timeout:g}",
                *extra]
        return await threads.deferToThread(peers.run_cli, args, timeout + 15)

    async def assertState(self, action, expected, **kwargs):
        status, out, err, elapsed = await self.cli(action, **kwargs)
        self.assertEqual((status, out, err), (0, expected + "\n", ""),
                         f"powerctl driver {action} against {self.peer.name}")
        return elapsed

    def assertError(self, result, kind, status, secrets=()):
        code, out, err, _ = result
        self.assertEqual(out, "", "nothing on stdout when the command fails")
        match = ERROR_LINE.match(err)
        self.assertIsNotNone(match, f"not one 'error (<kind>): ...' line: {err!r}")
        self.assertEqual(match.group("kind"), kind, err)
        self.assertEqual(code, status, err)
        for secret in secrets:
            self.assertNotIn(secret, out + err)


class _SwitchingPeerMixin(_CliPeerMixin):
    """A peer whose power we can read back after every command."""

    async def test_query_on_off_cycle(self):
        await self.assertState("query", "off")
        await self.assertState("on", "on")
        self.assertEqual(self.peer.power(), "on")
        await self.assertState("query", "on")
        await self.assertState("off", "off")
        self.assertEqual(self.peer.power(), "off")
        await self.assertState("cycle", "on")
        self.assertEqual(self.peer.power(), "on")


class IpmiSimCliTests(_SwitchingPeerMixin, unittest.TestCase):
    """``--driver ipmi`` against OpenIPMI's ipmi_sim."""

    peer_class = peers.IpmiSimPeer
    timeout = 90
    if peers.IpmiSimPeer.missing():
        skip = peers.IpmiSimPeer.missing()

    async def setUp(self):
        await self.start_peer()

    async def test_wrong_password(self):
        wrong = "Wr0ng-ipmi-Secret"
        result = await self.cli("query", password=wrong, timeout=10)
        # "auth" (3), not "timeout" (5): the refusal ended it, not the 10 s budget.
        self.assertError(result, "auth", 3, secrets=[wrong, self.peer.password])


class SnmpdCliTests(_SwitchingPeerMixin, unittest.TestCase):
    """``--driver snmp -p family=apc-rpdu`` against net-snmp snmpd."""

    peer_class = peers.SnmpdPeer
    timeout = 90
    if peers.SnmpdPeer.missing():
        skip = peers.SnmpdPeer.missing()

    async def setUp(self):
        await self.start_peer()

    async def test_v3_wrong_auth_key(self):
        wrong = "wr0ng-auth-key"
        args = ["driver", "query", "--driver", "snmp", "--timeout", "10"]
        for key, value in self.peer.v3_params(auth_key=wrong).items():
            args += ["-p", f"{key}={value}"]
        result = await threads.deferToThread(peers.run_cli, args, 25)
        self.assertError(result, "auth", 3, secrets=[wrong, self.peer.peer.priv])

    async def test_wrong_community_times_out(self):
        # v1/v2c agents drop a wrong community silently: only a timeout can tell.
        wrong = "n0t-the-community"
        result = await self.cli("query", timeout=3, community=wrong, write_community=wrong)
        self.assertError(result, "timeout", 5, secrets=[wrong])
        self.assertIn("within 3s", result[2], "ended by the --timeout budget")

    async def test_read_only_community_cannot_switch(self):
        result = await self.cli("on", timeout=10, write_community=self.peer.peer.ro)
        self.assertError(result, "auth", 3)
        self.assertEqual(self.peer.power(), "off")

    async def test_soft_off_unsupported(self):
        result = await self.cli("soft-off", timeout=10)
        self.assertError(result, "unsupported", 7)


class SushyCliTests(_CliPeerMixin, unittest.TestCase):
    """``--driver redfish`` against the sushy-tools emulator (fake driver)."""

    peer_class = peers.SushyPeer
    timeout = 120
    cli_timeout = 40.0
    if peers.SushyPeer.missing():
        skip = peers.SushyPeer.missing()

    async def setUp(self):
        await self.start_peer()

    async def test_query_on(self):
        await self.assertState("query", "off")
        await self.assertState("on", "on")
        self.assertEqual(await threads.deferToThread(self.peer.power), "On")
        await self.assertState("query", "on")

    async def test_wrong_password(self):
        if not self.peer.authenticated:
            raise unittest.SkipTest("the emulator's Python has no bcrypt: no auth file")
        wrong = "Wr0ng-redfish-Secret"
        result = await self.cli("query", timeout=10, password=wrong)
        self.assertError(result, "auth", 3, secrets=[wrong, self.peer.password])
