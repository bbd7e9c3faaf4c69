"""
The ``ipmi`` driver against a standard peer: OpenIPMI's ``ipmi_sim``.

``ipmi_sim`` answers Chassis Control only when it has a way to act on the
power: either a ``startcmd`` (power = "that process runs") or a
``chassis_control`` script.  We generate a tiny script that keeps the
power state in a file.  ipmi_sim accepts the soft-off directive but the
script interface has no graceful shutdown, so ``soft_off`` exercises the
fall-back to a hard off.  Skipped, with the reason, when the binary is
missing (Debian package ``openipmi``).

Timings per operation are printed (``pytest -s``) and kept in
``PeerTests.timings``.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from twisted.internet import reactor, task
from twisted.trial import unittest

from powerctl.drivers import ipmi
from powerctl.drivers.errors import AuthenticationError, PowerError
from powerctl.drivers.interface import Timing
from powerctl.power import PowerState

IPMI_SIM = shutil.which("ipmi_sim")

LAN_CONF = """\
name "powerctl-peer"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "{script} 0x20"
  user 2 true "admin" "{password}" admin 10 none md2 md5 straight
"""

EMU = """\
mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x000000 0x0002
mc_enable 0x20
"""

# ipmi_sim runs "<script> <mc> get power" (prints power:<0|1>) and
# "<script> <mc> set power <0|1>".
CHASSIS_SCRIPT = """\
#!/bin/sh
state="$(dirname "$0")/power"
[ -f "$state" ] || echo 0 > "$state"
op=$2; shift 2
case "$op" in
get) for p in "$@"; do [ "$p" = power ] && echo "power:$(cat "$state")"; done ;;
set) while [ $# -ge 2 ]; do [ "$1" = power ] && echo "$2" > "$state"; shift 2; done ;;
esac
exit 0
"""

PASSWORD = "peer-Pa55word"
TIMING = Timing(timeout=5.0, retries=1, backoff=0.1, verify_timeout=5.0,
                poll_interval=0.1, soft_off_timeout=1.0)


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PeerTests(unittest.TestCase):
    timings = {}

    if IPMI_SIM is None:
        skip = "ipmi_sim not installed (apt-get install openipmi)"

    def setUp(self):
        # Not self.mktemp(): under pytest that lands in the working tree.
        base = tempfile.mkdtemp(prefix="powerctl-ipmi-sim-")
        self.addCleanup(shutil.rmtree, base, True)
        os.makedirs(os.path.join(base, "state"))
        script = os.path.join(base, "chassis.sh")
        with open(script, "w") as f:
            f.write(CHASSIS_SCRIPT)
        os.chmod(script, 0o755)
        self.power_file = os.path.join(base, "power")
        self.port = free_udp_port()
        with open(os.path.join(base, "lan.conf"), "w") as f:
            f.write(LAN_CONF.format(port=self.port, script=script, password=PASSWORD))
        with open(os.path.join(base, "sim.emu"), "w") as f:
            f.write(EMU)
        self.process = subprocess.Popen(
            [IPMI_SIM, "-c", "lan.conf", "-f", "sim.emu", "-s", "state", "-n"],
            cwd=base, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, start_new_session=True,
        )
        self.addCleanup(self.stop_peer)
        self.driver_type = ipmi.IpmiDriverType(reactor, timing=TIMING)
        self.addCleanup(self.driver_type.close)

    def stop_peer(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self.process.stderr.close()

    def driver(self, **overrides):
        params = {"host": "127.0.0.1", "port": self.port, "username": "admin",
                  "password": PASSWORD, "min_interval": 0.05}
        params.update(overrides)
        return self.driver_type.bind(self.driver_type.schema.validate(params))

    async def ready(self, driver):
        """Wait until ipmi_sim answers (it binds within a few ms)."""
        deadline = time.monotonic() + 10
        while True:
            if self.process.poll() is not None:
                self.fail("ipmi_sim exited: " + self.process.stderr.read().decode())
            try:
                return await driver.query()
            except PowerError:
                if time.monotonic() > deadline:
                    raise
                await task.deferLater(reactor, 0.1, lambda: None)

    async def timed(self, name, operation):
        start = time.monotonic()
        result = await operation()
        elapsed = time.monotonic() - start
        self.timings.setdefault(name, []).append(elapsed)
        sys.stdout.write(f"\nipmi_sim {name}: {elapsed * 1000:.1f} ms -> {result.value}")
        return result

    async def test_query_on_off_cycle(self):
        driver = self.driver()
        start = time.monotonic()
        await self.ready(driver)
        elapsed = time.monotonic() - start
        self.timings.setdefault("startup + login + first query", []).append(elapsed)
        sys.stdout.write(f"\nipmi_sim startup + login + first query: {elapsed * 1000:.1f} ms")
        self.assertEqual(await self.timed("query", driver.query), PowerState.OFF)
        self.assertEqual(await self.timed("on", driver.on), PowerState.ON)
        self.assertEqual(open(self.power_file).read().strip(), "1")
        self.assertEqual(await self.timed("on (already on)", driver.on), PowerState.ON)
        self.assertEqual(await self.timed("off", driver.off), PowerState.OFF)
        self.assertEqual(open(self.power_file).read().strip(), "0")
        await driver.on()
        self.assertEqual(await self.timed("cycle", driver.cycle), PowerState.ON)
        self.assertEqual(await self.timed("soft-off (falls back to off)", driver.soft_off),
                         PowerState.OFF)
        self.assertEqual(self.driver_type.sessions, 1)

    async def test_pinned_suite_3(self):
        driver = self.driver(cipher_suite=3)
        self.assertEqual(await self.ready(driver), PowerState.OFF)
        self.assertEqual(await self.timed("query (suite 3)", driver.query), PowerState.OFF)

    async def test_wrong_password(self):
        await self.ready(self.driver())
        start = time.monotonic()
        e = await self.assertFailure(self.driver(password="nope").query(),
                                     AuthenticationError)
        elapsed = time.monotonic() - start
        self.timings.setdefault("wrong password", []).append(elapsed)
        sys.stdout.write(f"\nipmi_sim wrong password -> {e.kind}: {elapsed * 1000:.1f} ms")
        self.assertNotIn(PASSWORD, str(e))  # refused, not timed out: its kind says so
