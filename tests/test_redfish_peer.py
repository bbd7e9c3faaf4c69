"""
The redfish driver against the standard peer: the sushy-tools emulator.

Runs ``sushy-emulator`` (found through ``$POWERCTL_SUSHY`` or on ``PATH``;
install it in a separate venv: ``python3 -m venv /tmp/sushy-venv &&
/tmp/sushy-venv/bin/pip install sushy-tools``) on 127.0.0.1 with its fake
driver, whose systems apply a power change 1-11 s after the request, so the
verify timeout here is 30 s.  When bcrypt is importable by the emulator's
own Python, basic auth is switched on with a generated htpasswd file.
Timings per operation are printed (``pytest -s``) and kept in
``self.timings``.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid

from twisted.internet import defer, protocol, reactor, task
from twisted.trial import unittest

from powerctl.drivers.errors import AuthenticationError, InvalidParameters
from powerctl.drivers.interface import Timing
from powerctl.drivers.redfish import RedfishDriverType
from powerctl.power import PowerState

PEER_TIMING = Timing(timeout=5.0, retries=2, backoff=0.5, verify_timeout=30.0,
                     poll_interval=0.5, soft_off_timeout=30.0)
USER, PASSWORD = "admin", "peer-pass"


def find_sushy():
    """The emulator executable, or None."""
    return os.environ.get("POWERCTL_SUSHY") or shutil.which("sushy-emulator")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def htpasswd_line(sushy):
    """``user:bcrypt-hash`` made by the emulator's Python, or None without bcrypt."""
    python = os.path.join(os.path.dirname(os.path.realpath(sushy)), "python")
    if not os.path.exists(python):
        python = os.path.join(os.path.dirname(sushy), "python")
    code = "import bcrypt,sys;print(bcrypt.hashpw(sys.stdin.read().encode(),bcrypt.gensalt(4)).decode())"
    try:
        out = subprocess.run([python, "-c", code], input=PASSWORD, capture_output=True,
                             text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{USER}:{out}"


class _Emulator(protocol.ProcessProtocol):
    """Collects output and tells when the process ended."""

    def __init__(self):
        self.output = []
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.output.append(data)

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended.callback(None)


class SushyPeerTests(unittest.TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def setUp(self):
        sushy = find_sushy()
        if not sushy:
            raise unittest.SkipTest(
                "sushy-emulator not found: set POWERCTL_SUSHY or put it on PATH "
                "(pip install sushy-tools in a separate venv)")
        self.timings = []
        self.names = {"peer-a": str(uuid.uuid4()), "peer-b": str(uuid.uuid4())}
        self.port = free_port()
        self.authenticated = self._write_config(sushy)
        self.proc = _Emulator()
        self.transport = reactor.spawnProcess(
            self.proc, sushy, [sushy, "--config", self.config_path],
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.addCleanup(self._stop)
        self.url = f"http://127.0.0.1:{self.port}"
        self.type = RedfishDriverType(reactor, timing=PEER_TIMING)
        self.addCleanup(self.type.close)
        yield self._wait_ready()

    def _write_config(self, sushy):
        state = tempfile.mkdtemp(prefix="powerctl-sushy-")
        self.addCleanup(shutil.rmtree, state, True)
        line = htpasswd_line(sushy)
        systems = [{"uuid": u, "name": n, "power_state": "Off",
                    "nics": [{"mac": f"00:5c:52:31:3a:{i:02x}", "ip": f"172.22.0.{100 + i}"}]}
                   for i, (n, u) in enumerate(self.names.items())]
        config = [
            "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'",
            f"SUSHY_EMULATOR_LISTEN_PORT = {self.port}",
            "SUSHY_EMULATOR_FAKE_DRIVER = True",
            f"SUSHY_EMULATOR_STATE_DIR = {state!r}",
            f"SUSHY_EMULATOR_FAKE_SYSTEMS = {systems!r}",
        ]
        if line:
            auth = os.path.join(state, "htpasswd")
            with open(auth, "w") as f:
                f.write(line + "\n")
            config.append(f"SUSHY_EMULATOR_AUTH_FILE = {auth!r}")
        self.config_path = os.path.join(state, "emulator.conf")
        with open(self.config_path, "w") as f:
            f.write("\n".join(config) + "\n")
        return bool(line)

    @defer.inlineCallbacks
    def _wait_ready(self):
        client = self.type.http.get(False)
        for _ in range(150):
            try:
                response = yield client.request("GET", self.url + "/redfish/v1/")
                if response.code == 200:
                    return
            except Exception:
                pass
            if self.proc.ended.called:
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        output = b"".join(self.proc.output).decode(errors="replace")[-2000:]
        self.fail(f"sushy-emulator did not start:\n{output}")

    def _stop(self):
        if not self.proc.ended.called:
            self.transport.signalProcess("TERM")
        return self.proc.ended

    def driver(self, **params):
        params.setdefault("url", self.url)
        params.setdefault("username", USER)
        params.setdefault("password", PASSWORD)
        return self.type.bind(self.type.schema.validate(params))

    @defer.inlineCallbacks
    def timed(self, label, d):
        started = reactor.seconds()
        result = yield d
        elapsed = reactor.seconds() - started
        self.timings.append((label, elapsed))
        sys.stdout.write(f"\nsushy-tools {label}: {result.value} in {elapsed:.2f}s")
        return result

    @defer.inlineCallbacks
    def test_query_on_off_soft_off_cycle_by_name(self):
        driver = self.driver(system="peer-a")  # answered 307 to the uuid
        self.assertEqual((yield self.timed("query", driver.query())), PowerState.OFF)
        self.assertEqual((yield self.timed("on", driver.on())), PowerState.ON)
        self.assertEqual((yield self.timed("query", driver.query())), PowerState.ON)
        self.assertEqual((yield self.timed("soft-off", driver.soft_off())), PowerState.OFF)
        self.assertEqual((yield self.timed("cycle (from off)", driver.cycle())), PowerState.ON)
        self.assertEqual((yield self.timed("off", driver.off())), PowerState.OFF)
        info = self.type.discovered(driver.root, "peer-a")
        self.assertTrue(info.uri.endswith(self.names["peer-a"]))
        self.assertTrue(info.advertised)

    @defer.inlineCallbacks
    def test_post_to_name_follows_307(self):
        client = self.type.http.get(True)
        target = f"{self.url}/redfish/v1/Systems/peer-b/Actions/ComputerSystem.Reset"
        response = yield client.request("POST", target, json_body={"ResetType": "On"},
                                        auth=(USER, PASSWORD))
        self.assertEqual(response.code, 204)
        self.assertIn(self.names["peer-b"], response.url)

    @defer.inlineCallbacks
    def test_system_required_with_two(self):
        error = yield self.assertFailure(self.driver().query(), InvalidParameters)
        self.assertIn(self.names["peer-a"], str(error))

    @defer.inlineCallbacks
    def test_wrong_password(self):
        if not self.authenticated:
            raise unittest.SkipTest("the emulator's Python has no bcrypt: no auth file")
        yield self.assertFailure(self.driver(system="peer-a", password="wrong").query(),
                                 AuthenticationError)
