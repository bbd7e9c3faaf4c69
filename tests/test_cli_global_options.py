"""
``--api``, ``--api-timeout`` and ``--json`` before the command as well as
after it (``powerctl --api URL node list``), against the fake API of
:mod:`tests.test_cli_rest`.
"""

import io
import json

from twisted.internet import defer
from twisted.trial import unittest

from powerctl.cli import Context
from powerctl.cli import main as cli_main
from tests.test_cli_rest import FakeApiMixin


class GlobalOptionTests(FakeApiMixin, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.api.nodes["n1"] = {"name": "n1", "cluster": "c1", "power": {
            "mode": "single", "agents": [{"driver": "ipmi", "params": {"host": "h"}}]},
            "desired_state": None, "power_state": "on", "responsive": True,
            "last_error": None, "drift": None}

    @defer.inlineCallbacks
    def cli(self, *argv, env=None):
        """(status, stdout, stderr) of ``powerctl argv`` (nothing added)."""
        ctx = Context(self.reactor, stdout=io.StringIO(), stderr=io.StringIO(),
                      stdin=io.StringIO(), env=env or {})
        status = yield cli_main.run(list(argv), self.reactor, ctx)
        return status, ctx.stdout.getvalue(), ctx.stderr.getvalue()

    @defer.inlineCallbacks
    def test_api_and_json_before_the_command(self):
        status, out, err = yield self.cli("--api", self.url, "node", "list")
        self.assertEqual(status, 0, err)
        self.assertIn("n1", out)
        self.assertEqual([r[:2] for r in self.api.requests], [("GET", "/v1/nodes")])
        status, out, err = yield self.cli("--json", "--api", self.url, "node", "show", "n1")
        self.assertEqual(status, 0, err)
        self.assertEqual(json.loads(out)["name"], "n1")
        status, out, err = yield self.cli("--api-timeout", "5", "--api", self.url, "--json",
                                          "cluster", "list")
        self.assertEqual((status, json.loads(out)[0]["name"]), (0, "c1"), err)

    @defer.inlineCallbacks
    def test_after_the_command_still_works_and_wins(self):
        status, out, err = yield self.cli("node", "list", "--api", self.url, "--json")
        self.assertEqual((status, [n["name"] for n in json.loads(out)]), (0, ["n1"]), err)
        status, out, err = yield self.cli("--api", "http://127.0.0.1:1", "node", "list",
                                          "--api", self.url)
        self.assertEqual(status, 0, err)
        self.assertIn("n1", out)

    @defer.inlineCallbacks
    def test_powerctl_api_is_still_the_default(self):
        status, out, err = yield self.cli("--json", "node", "list",
                                          env={"POWERCTL_API": self.url})
        self.assertEqual((status, [n["name"] for n in json.loads(out)]), (0, ["n1"]), err)
        # an explicit --api before the command beats the environment
        status, out, err = yield self.cli("--api", self.url, "node", "list",
                                          env={"POWERCTL_API": "http://127.0.0.1:1"})
        self.assertEqual(status, 0, err)

    @defer.inlineCallbacks
    def test_bad_or_misplaced_global_options_are_usage_errors(self):
        status, _, err = yield self.cli("--api", "ftp://x", "node", "list")
        self.assertEqual(status, 2)
        self.assertIn("not an http(s) URL", err)
        status, _, err = yield self.cli("--api-timeout", "0", "--api", self.url, "node", "list")
        self.assertEqual(status, 2)
        self.assertIn("--api-timeout", err)
        status, _, err = yield self.cli("--api", self.url, "driver", "list")
        self.assertEqual(status, 2)
        self.assertIn("--api does not apply to 'powerctl driver'", err)
        self.assertEqual(self.api.requests, [])

    @defer.inlineCallbacks
    def test_json_before_a_driver_command(self):
        status, out, err = yield self.cli("--json", "driver", "list")
        self.assertEqual(status, 0, err)
        self.assertIn("ipmi", json.dumps(json.loads(out)))
