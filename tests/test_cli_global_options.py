"""
``--api``, ``--api-timeout`` and ``--json`` before the command as well as
after it (``powerctl --api URL node list``), against the region's API served
in memory as in :mod:`tests.test_cli_rest`.
"""

import json
import os

from twisted.trial import unittest

from tests.test_cli_rest import URL, CliMixin, RefusingAgent, RegionApiMixin
from tests.test_store import StoreTestCase


class GlobalOptionTests(RegionApiMixin, StoreTestCase):
    """
    Every URL reaches the in-memory API, so the option that loses is given
    an invalid one (``ftp://x``): had it won, the command would exit 2.
    """

    def setUp(self):
        d = super().setUp()
        d.addCallback(lambda _: self.store.nodes.create("n1", "c1", {
            "mode": "single", "agents": [{"driver": "ipmi", "params": {
                "host": "h", "password": "p"}}]}))
        return d

    async def test_api_and_json_before_the_command(self):
        status, out, err = await self.cli("--api", URL, "node", "list", api=False)
        self.assertEqual(status, 0, err)
        self.assertIn("n1", out)
        self.assertEqual([r[:2] for r in self.sent()], [("GET", "/v1/nodes")])
        status, out, err = await self.cli("--json", "--api", URL, "node", "show", "n1",
                                          api=False)
        self.assertEqual(status, 0, err)
        self.assertEqual(json.loads(out)["name"], "n1")
        status, out, err = await self.cli("--api-timeout", "5", "--api", URL, "--json",
                                          "cluster", "list", api=False)
        self.assertEqual((status, json.loads(out)[0]["name"]), (0, "c1"), err)

    async def test_after_the_command_still_works_and_wins(self):
        status, out, err = await self.cli("node", "list", "--api", URL, "--json", api=False)
        self.assertEqual((status, [n["name"] for n in json.loads(out)]), (0, ["n1"]), err)
        status, out, err = await self.cli("--api", "ftp://x", "node", "list", "--api", URL,
                                          api=False)
        self.assertEqual(status, 0, err)
        self.assertIn("n1", out)

    async def test_powerctl_api_is_still_the_default(self):
        status, out, err = await self.cli("--json", "node", "list", api=False,
                                          env={"POWERCTL_API": URL})
        self.assertEqual((status, [n["name"] for n in json.loads(out)]), (0, ["n1"]), err)
        # an explicit --api before the command beats the environment
        status, out, err = await self.cli("--api", URL, "node", "list", api=False,
                                          env={"POWERCTL_API": "ftp://x"})
        self.assertEqual(status, 0, err)

    def token_file(self, token, mode=0o600):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(token + "\n")
        os.chmod(path, mode)
        return path

    async def test_token_file_before_or_after_the_command_beats_the_environment(self):
        good = self.token_file(self.api_token)
        wrong = {"POWERCTL_TOKEN": "not-a-token"}
        status, _, err = await self.cli("node", "list", env=wrong)
        self.assertEqual(status, 3, err)  # the environment's token alone is refused
        status, out, err = await self.cli("--token-file", good, "node", "list", env=wrong)
        self.assertEqual(status, 0, err)
        self.assertIn("n1", out)
        status, out, err = await self.cli("node", "list", "--token-file", good, env=wrong)
        self.assertEqual(status, 0, err)
        # after the command wins over before it
        bad = self.token_file("not-a-token-either")
        status, _, err = await self.cli("--token-file", bad, "node", "list",
                                        "--token-file", good)
        self.assertEqual(status, 0, err)
        # a token file others may read is refused, naming it (exit 2, nothing sent)
        sent = len(self.sent())
        status, _, err = await self.cli("--token-file", self.token_file(self.api_token, 0o644),
                                        "node", "list")
        self.assertEqual(status, 2, err)
        self.assertIn("accessible by other users", err)
        self.assertEqual(len(self.sent()), sent)


class MisplacedGlobalOptionTests(CliMixin, unittest.TestCase):
    """Refused before anything is sent."""

    def setUp(self):
        from twisted.internet import reactor

        self.reactor = reactor
        self.agent = RefusingAgent()

    async def test_bad_or_misplaced_global_options_are_usage_errors(self):
        status, _, err = await self.cli("--api", "ftp://x", "node", "list", api=False)
        self.assertEqual(status, 2)
        self.assertIn("not an http(s) URL", err)
        status, _, err = await self.cli("--api-timeout", "0", "--api", URL, "node", "list",
                                        api=False)
        self.assertEqual(status, 2)
        self.assertIn("--api-timeout", err)
        status, _, err = await self.cli("--api", URL, "driver", "list", api=False)
        self.assertEqual(status, 2)
        self.assertIn("--api does not apply to 'powerctl driver'", err)
        self.assertEqual(self.agent.requests, [])

    async def test_json_before_a_driver_command(self):
        status, out, err = await self.cli("--json", "driver", "list", api=False)
        self.assertEqual(status, 0, err)
        self.assertIn("ipmi", json.dumps(json.loads(out)))
