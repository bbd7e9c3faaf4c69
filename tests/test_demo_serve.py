"""
``powerctl demo --serve`` as a user runs it: a separate process that
converges, keeps serving (its pserv stays connected), and stops cleanly on
Ctrl-C -- PostgreSQL, the region and the simulators included -- instead of
losing its pserv after a while or ignoring the signal.
"""

import gc
import os
import re
import shutil
import stat
import sys
import tempfile

import treq
from twisted.internet import defer, protocol, reactor, task
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from tests.system import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Demo(protocol.ProcessProtocol):
    """Collects the demo's output; ``serving`` fires with its API URL, ``ended`` with its status."""

    def __init__(self):
        self.output = ""
        self.serving = defer.Deferred()
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.output += data.decode("utf-8", "replace")
        found = re.search(r"powerctl --api (http://\S+) node list", self.output)
        if found and not self.serving.called:
            self.serving.callback(found[1])

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)
        if not self.serving.called:
            self.serving.errback(AssertionError(f"the demo ended early:\n{self.output}"))


class DemoServeTests(unittest.TestCase):
    timeout = 240
    async def test_serves_until_ctrl_c_then_cleans_up(self):
        state = tempfile.mkdtemp(prefix="powerctl-demo-test-")
        os.chmod(state, 0o755)  # the demo makes it private (0700)
        self.addCleanup(shutil.rmtree, state, True)
        demo = _Demo()
        env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
        process = reactor.spawnProcess(
            demo, sys.executable,
            [sys.executable, "-c", "import sys; from powerctl.cli.main import main; "
             "sys.exit(main(['demo', '--serve', '--state-dir', sys.argv[1]]))", state],
            env=env, path=ROOT)
        self.addCleanup(lambda: demo.ended.called or process.signalProcess("KILL"))
        api = await demo.serving
        http = HTTPConnectionPool(reactor, persistent=False)

        with open(os.path.join(state, "token")) as f:  # the demo's admin token
            token = f.read().strip()

        async def get(path):
            response = await treq.get(api + path, pool=http,
                                      headers={"Authorization": [f"Bearer {token}"]})
            return response.code, await treq.json_content(response)

        async def pserv_live():
            code, clusters = await get("/v1/clusters")
            return code == 200 and [p["name"] for c in clusters for p in c["pservs"]
                                    if p.get("live")] == ["demo-pserv"]

        await wait_until(pserv_live, timeout=30)
        # It keeps serving: several heartbeats later the pserv is still live.
        gc.collect()
        await task.deferLater(reactor, 5.0, lambda: None)
        self.assertTrue(await pserv_live(), demo.output)
        code, nodes = await get("/v1/nodes")
        self.assertEqual(len(nodes), 7)

        process.signalProcess("INT")  # Ctrl-C
        # bounded generously for a loaded machine (the demo allows itself 4 s)
        status = await demo.ended.addTimeout(30, reactor)
        self.assertEqual(status, 0, demo.output)
        self.assertIn("stopping:", demo.output)
        self.assertIn("stopped serving", demo.output)
        self.assertNotIn("Traceback", demo.output)
        self.assertNotIn("cleanup:", demo.output)
        self.assertFalse(os.path.exists(os.path.join(state, "pg", "postmaster.pid")),
                         "PostgreSQL still running")
        with self.assertRaises(Exception):  # the API is gone
            await get("/v1/nodes")
        # issue 10: the state directory and its secrets are private
        self.assertEqual(stat.S_IMODE(os.stat(state).st_mode), 0o700)
        for name in ("token", "secret", "secrets.key"):
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(state, name)).st_mode), 0o600,
                             name)

    def test_the_state_directory_is_made_private(self):
        from powerctl.cli.demo import private_directory

        parent = tempfile.mkdtemp(prefix="powerctl-demo-state-")
        self.addCleanup(shutil.rmtree, parent, True)
        fresh = os.path.join(parent, "a", "demo")
        self.assertEqual(private_directory(fresh), fresh)
        self.assertEqual(stat.S_IMODE(os.stat(fresh).st_mode), 0o700)
        existing = os.path.join(parent, "b")
        os.mkdir(existing, 0o755)
        private_directory(existing)
        self.assertEqual(stat.S_IMODE(os.stat(existing).st_mode), 0o700)

    def test_help_is_plain_text(self):
        """``powerctl demo --help`` reads as text, not reStructuredText source."""
        from powerctl.cli import demo

        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out), self.assertRaises(SystemExit):
            demo.parse(["--help"])
        text = out.getvalue()
        self.assertNotIn("``", text)
        self.assertIn("Ctrl-C", text)
        self.assertIn("--serve", text)
