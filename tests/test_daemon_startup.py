"""
The daemons refuse to start loudly: ``twistd powerctl-region`` and
``twistd powerctl-pserv`` as real processes, given what an operator gets
wrong in the first hour (a database that is not there, a secret too short,
a setting of the wrong kind).  Each must exit non-zero with a line naming
what is wrong -- never a traceback, never a daemon that stays up serving
errors.
"""

import os
import sys

from twisted.internet import reactor, utils
from twisted.trial import unittest

from tests.system import free_port

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class StartupFailureTests(unittest.TestCase):
    timeout = 120

    def write(self, text):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o600)  # the daemons refuse a secret others can read
        return path

    async def twistd(self, *argv):
        """Run twistd in the foreground; (exit status, everything it printed)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        out, err, code = await utils.getProcessOutputAndValue(
            TWISTD, ["-n", "--pidfile=", *argv], env=env, path=ROOT, reactor=reactor)
        return code, (out + err).decode("utf-8", "replace")

    def region_argv(self, database, secret_file):
        return ["powerctl-region", "--database", database, "--secret-file", secret_file,
                "--api-endpoint", "tcp:0:interface=127.0.0.1",
                "--rpc-endpoint", "tcp:0:interface=127.0.0.1"]

    def assertOneLineFailure(self, code, output, *expected):
        self.assertNotEqual(code, 0, output)
        self.assertNotIn("Traceback", output)
        lines = [line for line in output.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, output)
        for text in expected:
            self.assertIn(text, lines[0])
    async def test_region_exits_when_the_database_is_unreachable(self):
        port = free_port()  # nothing listens there
        secret = self.write("a-secret-long-enough-for-the-region")
        code, output = await self.twistd(*self.region_argv(
            f"host=127.0.0.1 port={port} dbname=powerctl user=p password=hunter2", secret))
        self.assertOneLineFailure(code, output, "powerctl-region: cannot start: ",
                                  "cannot reach the database", f"port={port}",
                                  "Connection refused")
        self.assertNotIn("hunter2", output)
    async def test_a_short_secret_is_a_message(self):
        short = self.write("short")
        code, output = await self.twistd(*self.region_argv("dbname=x", short))
        self.assertOneLineFailure(code, output, "powerctl-region: cannot start: ",
                                  short, "at least 16 bytes")
        code, output = await self.twistd("powerctl-pserv", "--secret-file", short)
        self.assertOneLineFailure(code, output, "powerctl-pserv: cannot start: ",
                                  "at least 16 bytes")
    async def test_a_bad_setting_names_the_file_the_key_and_what_is_allowed(self):
        path = self.write('[region]\nlease = "soon"\n')
        code, output = await self.twistd("powerctl-region", "--config", path)
        self.assertNotEqual(code, 0, output)
        self.assertNotIn("Traceback", output)
        self.assertIn(f"{path}: lease must be a positive number", output)
        path = self.write('[region]\nleese = 3\n')
        code, output = await self.twistd("powerctl-region", "--config", path)
        self.assertNotEqual(code, 0, output)
        self.assertIn(f"{path}: unknown setting(s) leese; known: name, database", output)
