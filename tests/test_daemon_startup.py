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

from tests.pg import DatabaseMixin
from tests.system import free_port, key_file

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TwistdMixin:
    """Run the daemons under twistd, in the foreground, as an operator would."""

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


class StartupFailureTests(TwistdMixin, unittest.TestCase):
    timeout = 120

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
    async def test_plain_amp_beyond_loopback_is_refused_before_the_database(self):
        secret = self.write("a-secret-long-enough-for-the-region")
        argv = self.region_argv("host=127.0.0.1 port=1 dbname=x", secret)
        code, output = await self.twistd(*argv, "--rpc-endpoint", "tcp:0:interface=0.0.0.0")
        self.assertOneLineFailure(code, output, "powerctl-region: cannot start: ",
                                  "tcp:0:interface=0.0.0.0")
        self.assertNotIn("database", output)

    async def test_an_endpoint_that_does_not_parse_is_a_message(self):
        secret = self.write("a-secret-long-enough-for-the-region")
        for option in ("--api-endpoint", "--rpc-endpoint"):
            argv = self.region_argv("host=127.0.0.1 port=1 dbname=x", secret)
            code, output = await self.twistd(*argv, option, "foo:1")
            self.assertOneLineFailure(code, output, "powerctl-region: cannot start: ",
                                      "'foo:1' is not an endpoint")
        code, output = await self.twistd("powerctl-pserv", "--secret-file", secret,
                                         "--region", "foo:bar")
        self.assertOneLineFailure(code, output, "powerctl-pserv: cannot start: ",
                                  "region 'foo:bar' is not an endpoint")

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


class FailureAfterTheDatabaseCheckTests(TwistdMixin, DatabaseMixin, unittest.TestCase):
    """
    What fails once the database answered -- a port taken, the key file --
    happens with the reactor running: the region must still exit non-zero
    with one line naming it (it used to log a traceback and exit 0).
    """

    timeout = 120

    def assertFailedOnce(self, code, output, *expected):
        self.assertEqual(code, 1, output)
        self.assertNotIn("Traceback", output)
        lines = [line for line in output.splitlines() if "cannot start" in line]
        self.assertEqual(len(lines), 1, output)
        self.assertIn("powerctl-region: cannot start: ", lines[0])
        for text in expected:
            self.assertIn(text, lines[0])

    async def test_a_port_in_use_is_one_line_and_exit_status_1(self):
        import socket

        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        taken = f"tcp:{port}:interface=127.0.0.1"
        secret = self.write("a-secret-long-enough-for-the-region")
        argv = self.region_argv(self.dsn, secret) + ["--key-file", key_file(self)]
        for option, what in (("--api-endpoint", "the REST API"),
                             ("--rpc-endpoint", "pservs (AMP)")):
            code, output = await self.twistd(*argv, option, taken)
            self.assertFailedOnce(code, output, f"cannot listen for {what} on {taken}",
                                  "Address already in use")

    async def test_a_missing_key_file_is_one_line_and_exit_status_1(self):
        secret = self.write("a-secret-long-enough-for-the-region")
        missing = os.path.abspath(self.mktemp())
        code, output = await self.twistd(*self.region_argv(self.dsn, secret),
                                         "--key-file", missing)
        self.assertFailedOnce(code, output, f"key file {missing} does not exist")
