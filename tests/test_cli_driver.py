"""
``powerctl driver``, ``powerctl sim`` and the entry point.

Mostly in-process (``run(argv, reactor, ctx)`` against simulators on
loopback), plus a few real subprocesses of the console script to prove the
process-level behaviour: exit statuses, nothing sent on bad parameters, a
simulator announced and stopped by SIGTERM.

No test times the command: a bound is shown by the error naming the budget
that ended it, and waits are for events (a line printed), each with a
deadline that only turns a hang into a failure.
"""

import argparse
import io
import json
import os
import signal
import sys

from twisted.internet import defer, protocol, utils
from twisted.trial import unittest

from powerctl.cli import Context, UsageError, combine, exit_status
from powerctl.cli import main as cli_main
from powerctl.cli.driver import parse_pairs, timing_for
from powerctl.cli.output import Progress, scrub, table
from powerctl.testing.waiting import until

POWERCTL = os.path.join(os.path.dirname(sys.executable), "powerctl")


def reactor():
    from twisted.internet import reactor

    return reactor


def make_ctx(stdin=""):
    return Context(reactor(), stdout=io.StringIO(), stderr=io.StringIO(),
                   stdin=io.StringIO(stdin), env={})


async def run(*argv, stdin=""):
    """Run the CLI in-process: (status, stdout, stderr)."""
    ctx = make_ctx(stdin)
    status = await cli_main.run(list(argv), reactor(), ctx)
    return status, ctx.stdout.getvalue(), ctx.stderr.getvalue()


def sim_options(module, *argv):
    return module.add_arguments(argparse.ArgumentParser()).parse_args(list(argv))


class DriverCommandTests(unittest.TestCase):
    """``powerctl driver ...`` in-process against the simulators."""

    timeout = 30

    async def start_snmp(self, *argv):
        from powerctl.sim import snmp

        sim = await snmp.start(reactor(), sim_options(snmp, *argv))
        self.addCleanup(sim.stop)
        return sim

    def start_redfish(self, *argv):
        from powerctl.sim import redfish

        sim = redfish.start(reactor(), sim_options(redfish, "--delay", "0.1", *argv))
        self.addCleanup(sim.stop)
        return sim

    def snmp_params(self, sim, outlet=2):
        return ["-p", "host=127.0.0.1", "-p", f"port={sim.port}", "-p", "family=apc-rpdu",
                "-p", f"outlet={outlet}", "-p", "write_community=private"]

    def redfish_params(self, sim, password="password"):
        return ["-p", f"url={sim.url}", "-p", "username=admin", "-p", f"password={password}"]

    @defer.inlineCallbacks
    def test_snmp_on_then_query(self):
        sim = yield defer.ensureDeferred(self.start_snmp())
        params = self.snmp_params(sim)
        status, out, err = yield defer.ensureDeferred(run("driver", "on", "--driver", "snmp", *params))
        self.assertEqual((status, out, err), (0, "on\n", ""))
        self.assertEqual(sim.outlets[2].value, "on")
        status, out, _ = yield defer.ensureDeferred(run("driver", "query", "-d", "snmp", *params))
        self.assertEqual((status, out), (0, "on\n"))

    @defer.inlineCallbacks
    def test_ipmi_query_and_on(self):
        from powerctl.sim import ipmi

        sim = ipmi.start(reactor(), sim_options(ipmi, "--power", "off"))
        self.addCleanup(sim.stop)
        params = ["--driver", "ipmi", "-p", "host=127.0.0.1", "-p", f"port={sim.port}",
                  "-p", "username=admin", "-p", "password=password", "--timeout", "10"]
        status, out, err = yield defer.ensureDeferred(run("driver", "query", *params))
        self.assertEqual((status, out, err), (0, "off\n", ""))
        status, out, err = yield defer.ensureDeferred(run("driver", "on", "--json", *params))
        self.assertEqual(status, 0, err)
        doc = json.loads(out)
        self.assertEqual((doc["driver"], doc["action"], doc["state"], doc["error"]),
                         ("ipmi", "on", "on", None))
        self.assertEqual(sim.bmc().power.value, "on")

    @defer.inlineCallbacks
    def test_redfish_json(self):
        sim = self.start_redfish()
        status, out, err = yield defer.ensureDeferred(
            run("driver", "on", "--driver", "redfish", "--json", *self.redfish_params(sim)))
        self.assertEqual(status, 0, err)
        self.assertEqual(json.loads(out)["state"], "on")

    @defer.inlineCallbacks
    def test_auth_failure_exit_3_without_the_password(self):
        sim = self.start_redfish()
        status, out, err = yield defer.ensureDeferred(run(
            "driver", "query", "--driver", "redfish", "--json",
            *self.redfish_params(sim, password="hunter2-wrong")))
        self.assertEqual(status, 3)
        self.assertTrue(err.startswith("error (auth): "), err)
        self.assertEqual(err.count("\n"), 1)
        self.assertEqual(json.loads(out)["error"]["kind"], "auth")
        self.assertNotIn("hunter2", out + err)

    @defer.inlineCallbacks
    def test_invalid_params_exit_2_and_nothing_sent(self):
        sim = self.start_redfish()
        for extra in (["-p", "colour=red"], ["-p", "verify_tls=maybe"], ["-p", "novalue"]):
            status, out, err = yield defer.ensureDeferred(run(
                "driver", "on", "--driver", "redfish", *self.redfish_params(sim), *extra))
            self.assertEqual((status, out), (2, ""), extra)
            self.assertTrue(err.startswith("error (config): "), err)
            self.assertNotIn("password\n", err)
        self.assertEqual(sim.requests, [])

    @defer.inlineCallbacks
    def test_unknown_driver(self):
        status, out, err = yield defer.ensureDeferred(run("driver", "on", "--driver", "amt"))
        self.assertEqual((status, out), (2, ""))
        self.assertIn("unknown driver 'amt'", err)
        self.assertIn("ipmi", err)

    @defer.inlineCallbacks
    def test_timeout_exit_5_promptly(self):
        sim = yield defer.ensureDeferred(self.start_snmp("--fault", "hang"))
        status, out, err = yield defer.ensureDeferred(run(
            "driver", "on", "--driver", "snmp", *self.snmp_params(sim), "--timeout", "0.5"))
        self.assertEqual((status, out), (5, ""))
        # Ended by the --timeout budget itself, not by the driver's retries.
        self.assertEqual(err, "error (timeout): snmp on: no result within 0.5s\n")

    @defer.inlineCallbacks
    def test_unsupported_exit_7(self):
        sim = yield defer.ensureDeferred(self.start_snmp())
        status, _, err = yield defer.ensureDeferred(run(
            "driver", "soft-off", "--driver", "snmp", *self.snmp_params(sim)))
        self.assertEqual(status, 7)
        self.assertIn("error (unsupported)", err)
        status, _, err = yield defer.ensureDeferred(run(
            "driver", "query", "--driver", "manual", "-p", "label=rack1"))
        self.assertEqual(status, 7)

    @defer.inlineCallbacks
    def test_unreachable_or_timeout_is_bounded(self):
        # Nothing listens on port 9 of loopback: refused (HTTP), retried at
        # most until the budget.
        status, _, err = yield defer.ensureDeferred(run(
            "driver", "query", "--driver", "redfish", "-p", "url=http://127.0.0.1:9",
            "--timeout", "1"))
        self.assertIn(status, (4, 5), err)
        if status == 5:
            self.assertEqual(err, "error (timeout): redfish query: no result within 1s\n")
        else:
            self.assertTrue(err.startswith("error (unreachable): "), err)

    @defer.inlineCallbacks
    def test_manual_confirmed_and_declined(self):
        status, out, err = yield defer.ensureDeferred(run(
            "driver", "on", "--driver", "manual", "-p", "label=rack1-u12", stdin="yes\n"))
        self.assertEqual((status, out), (0, "on\n"), err)
        self.assertIn("rack1-u12", err)
        status, out, err = yield defer.ensureDeferred(run(
            "driver", "off", "--driver", "manual", "-p", "label=rack1-u12", stdin="no\n"))
        self.assertEqual((status, out), (1, ""))
        self.assertIn("declined", err)

    @defer.inlineCallbacks
    def test_mapping_params_take_json(self):
        status, _, err = yield defer.ensureDeferred(run(
            "driver", "on", "--driver", "webhook", "-p", "on_url=http://127.0.0.1:9/on",
            "-p", "off_url=http://127.0.0.1:9/off", "-p", "headers={not json"))
        self.assertEqual(status, 2)
        self.assertIn("'headers': not valid JSON", err)

    @defer.inlineCallbacks
    def test_params_json_file_keeps_secrets_off_the_command_line(self):
        sim = yield defer.ensureDeferred(self.start_snmp())
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump({"host": "127.0.0.1", "port": sim.port, "family": "apc-rpdu",
                       "write_community": "private"}, f)
        status, out, err = yield defer.ensureDeferred(run(
            "driver", "on", "--driver", "snmp", "--params-json", path, "-p", "outlet=5"))
        self.assertEqual((status, out), (0, "on\n"), err)
        status, _, err = yield defer.ensureDeferred(run(
            "driver", "on", "--driver", "snmp", "--params-json", "-", stdin="[1]"))
        self.assertEqual(status, 2)
        self.assertIn("JSON object", err)

    @defer.inlineCallbacks
    def test_list(self):
        status, out, _ = yield defer.ensureDeferred(run("driver", "list"))
        self.assertEqual(status, 0)
        self.assertTrue(out.startswith("DRIVER"))
        for name in ("ipmi", "snmp", "redfish", "webhook", "manual"):
            self.assertIn(f"\n{name} ", out)
        status, out, _ = yield defer.ensureDeferred(run("driver", "list", "ipmi", "--json"))
        [ipmi] = json.loads(out)
        password = next(p for p in ipmi["params"] if p["name"] == "password")
        self.assertEqual((password["secret"], password["required"]), (True, True))
        self.assertTrue(ipmi["capabilities"]["queryable"])
        status, _, err = yield defer.ensureDeferred(run("driver", "list", "amt"))
        self.assertEqual(status, 2)

    @defer.inlineCallbacks
    def test_usage_errors(self):
        for argv in (["driver", "on"],                      # no --driver
                     ["driver", "explode", "--driver", "ipmi"],
                     ["driver", "on", "--driver", "ipmi", "--timeout", "0"],
                     ["frobnicate"], []):
            status, out, err = yield defer.ensureDeferred(run(*argv))
            self.assertEqual((status, out), (2, ""), argv)
            self.assertIn("usage:", err)
        status, out, _ = yield defer.ensureDeferred(run("driver", "on", "--help"))
        self.assertEqual(status, 0)
        self.assertIn("--timeout", out)


class SimCommandTests(unittest.TestCase):
    """``powerctl sim`` in-process: announce, then stop on interruption."""

    @defer.inlineCallbacks
    def test_redfish_announce_and_stop(self):
        ctx = make_ctx()
        d = cli_main.run(["sim", "redfish", "--systems", "2", "--json"], reactor(), ctx)
        yield defer.ensureDeferred(until(ctx.stdout.getvalue, what="the announcement"))
        info = json.loads(ctx.stdout.getvalue())
        self.assertEqual(info["systems"], ["node-id-1", "node-id-2"])
        self.assertEqual(len(info["agents"]), 2)
        status, out, err = yield defer.ensureDeferred(run(
            "driver", "query", "--driver", "redfish",
            *[f"-p{k}={v}" for k, v in info["agents"][1]["params"].items()]))
        self.assertEqual((status, out), (0, "off\n"), err)
        ctx.interrupt()
        self.assertEqual((yield d), 0)

    @defer.inlineCallbacks
    def test_human_announcement(self):
        ctx = make_ctx()
        d = cli_main.run(["sim", "snmp", "--outlets", "4"], reactor(), ctx)
        yield defer.ensureDeferred(until(lambda: "Ctrl-C" in ctx.stdout.getvalue(),
                                         what="the announcement"))
        out = ctx.stdout.getvalue()
        self.assertIn("snmp simulator listening on 127.0.0.1:", out)
        self.assertIn("try: powerctl driver query --driver snmp", out)
        ctx.interrupt()
        self.assertEqual((yield d), 0)
        self.assertIn("stopped", ctx.stderr.getvalue())

    @defer.inlineCallbacks
    def test_loopback_only(self):
        status, _, err = yield defer.ensureDeferred(run("sim", "ipmi", "--host", "0.0.0.0"))
        self.assertEqual(status, 2)
        self.assertIn("loopback only", err)


class HelpersTests(unittest.TestCase):
    def test_exit_statuses(self):
        self.assertEqual([exit_status(k) for k in
                          ("config", "auth", "unreachable", "timeout", "protocol",
                           "unsupported", "error", "multiple")],
                         [2, 3, 4, 5, 6, 7, 1, 1])
        self.assertEqual(combine([0, 0]), 0)
        self.assertEqual(combine([0, 5, 5]), 5)
        self.assertEqual(combine([3, 5]), 1)

    def test_parse_pairs(self):
        from powerctl.drivers.webhook import SCHEMA

        self.assertEqual(parse_pairs(["a=b=c", "headers={\"X\": \"y\"}"], SCHEMA),
                         {"a": "b=c", "headers": {"X": "y"}})
        e = self.assertRaises(UsageError, parse_pairs, ["password"])
        self.assertNotIn("password", str(e))  # never echo what may be a secret
        self.assertRaises(UsageError, parse_pairs, ["a=1", "a=2"])

    def test_timing_fits_the_budget(self):
        t = timing_for(3)
        self.assertEqual((t.verify_timeout, t.soft_off_timeout), (3, 1.5))
        self.assertLess(t.timeout, 3)
        self.assertEqual(timing_for(600).timeout, 10)

    def test_output_helpers(self):
        self.assertEqual(table([{"a": 1, "b": None}], [("A", "a"), ("LONG", "b")]),
                         "A  LONG\n1  -")
        self.assertEqual(scrub("bad secret1 here", ["secret1"]), "bad *** here")
        stream = io.StringIO()
        bar = Progress(stream, 2, enabled=True, width=4)
        bar.advance()
        bar.advance(ok=False)
        bar.finish()
        self.assertEqual(stream.getvalue(),
                         "\r[##..] 1/2 done\r[####] 2/2 done, 1 failed\n")
        quiet = io.StringIO()
        Progress(quiet, 2, enabled=False).advance()
        self.assertEqual(quiet.getvalue(), "")


class DemoHookTests(unittest.TestCase):
    def test_missing_demo_module(self):
        self.patch(cli_main, "DEMO_MODULE", "powerctl.cli.no_such_demo")
        stderr = io.StringIO()
        self.assertEqual(cli_main.run_demo([], stderr), 1)
        self.assertIn("powerctl demo is not available", stderr.getvalue())

    def test_demo_module_is_called(self):
        import importlib.machinery
        import types

        calls = []
        module = types.ModuleType("powerctl_fake_demo")
        module.main = lambda argv: calls.append(argv) or 3
        module.__spec__ = importlib.machinery.ModuleSpec("powerctl_fake_demo", None)
        sys.modules["powerctl_fake_demo"] = module
        self.addCleanup(sys.modules.pop, "powerctl_fake_demo", None)
        self.patch(cli_main, "DEMO_MODULE", "powerctl_fake_demo")
        self.assertEqual(cli_main.run_demo(["--nodes", "3"]), 3)
        self.assertEqual(calls, [["--nodes", "3"]])


class _Lines(protocol.ProcessProtocol):
    """Collects a subprocess's output; fires ``first_line`` and ``ended``."""

    def __init__(self):
        self.out = b""
        self.err = b""
        self.first_line = defer.Deferred()
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.out += data
        if b"\n" in self.out and not self.first_line.called:
            self.first_line.callback(self.out.split(b"\n")[0].decode())

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        if not self.first_line.called:
            self.first_line.errback(RuntimeError(self.err.decode()))
        self.ended.callback(reason.value.exitCode)


class ConsoleScriptTests(unittest.TestCase):
    """The installed ``powerctl`` script as a real process."""

    timeout = 30

    def setUp(self):
        if not os.path.exists(POWERCTL):
            raise unittest.SkipTest(f"console script not installed at {POWERCTL}")

    def env(self):
        return dict(os.environ, PYTHONUNBUFFERED="1")

    @defer.inlineCallbacks
    def test_query_against_in_test_simulator(self):
        from powerctl.sim import snmp

        sim = yield snmp.start(reactor(), sim_options(snmp, "--initial", "on"))
        self.addCleanup(sim.stop)
        out, err, status = yield utils.getProcessOutputAndValue(POWERCTL, [
            "driver", "query", "--driver", "snmp", "-p", "host=127.0.0.1",
            "-p", f"port={sim.port}", "-p", "family=apc-rpdu", "-p", "outlet=1",
        ], env=self.env())
        self.assertEqual((status, out, err), (0, b"on\n", b""))
        self.assertGreater(sim.datagrams, 0)

    @defer.inlineCallbacks
    def test_bad_params_exit_2_nothing_sent(self):
        from powerctl.sim import snmp

        sim = yield snmp.start(reactor(), sim_options(snmp))
        self.addCleanup(sim.stop)
        out, err, status = yield utils.getProcessOutputAndValue(POWERCTL, [
            "driver", "on", "--driver", "snmp", "-p", "host=127.0.0.1",
            "-p", f"port={sim.port}", "-p", "family=apc-rpdu", "-p", "outlet=first",
            "-p", "write_community=s3cret-rw",
        ], env=self.env())
        self.assertEqual((status, out), (2, b""))
        self.assertEqual(err, b"error (config): snmp parameter 'outlet': must be an integer\n")
        self.assertEqual(sim.datagrams, 0)

    @defer.inlineCallbacks
    def test_sim_runs_until_sigterm(self):
        lines = _Lines()
        process = reactor().spawnProcess(
            lines, POWERCTL, [POWERCTL, "sim", "ipmi", "--json"], env=self.env())
        try:
            info = json.loads((yield lines.first_line))
        except Exception:
            process.signalProcess("KILL")
            raise
        self.assertEqual(info["host"], "127.0.0.1")
        status, out, err = yield defer.ensureDeferred(run(
            "driver", "query", "--driver", "ipmi", "-p", "host=127.0.0.1",
            "-p", f"port={info['ports'][0]}", "-p", "username=admin",
            "-p", "password=password", "--timeout", "10"))
        self.assertEqual((status, out), (0, "off\n"), err)
        process.signalProcess(signal.SIGTERM)
        self.assertEqual((yield lines.ended), 0)
