"""
The protocols' standard peers, started and stopped synchronously, for tests
and scripts that drive them from *outside* (e.g. ``powerctl driver ...`` as a
subprocess: ``tests/test_cli_peers.py``, ``bench/driver_cli_peers.py``).

* :class:`SnmpdPeer` -- net-snmp ``snmpd`` emulating an APC rPDU
  (:mod:`tests.snmppeer`);
* :class:`IpmiSimPeer` -- OpenIPMI ``ipmi_sim`` with a chassis_control
  script (configuration from :mod:`tests.test_ipmi_peer`);
* :class:`SushyPeer` -- the sushy-tools Redfish emulator with its fake
  driver (helpers from :mod:`tests.test_redfish_peer`), found through
  ``$POWERCTL_SUSHY``, ``.venv-peers/bin/sushy-emulator`` or ``PATH``.

Every peer is a separate process bound to 127.0.0.1 on a free port, so
``start()`` and ``stop()`` block only briefly (call them in a thread from a
reactor if you like).  ``missing()`` says why a peer cannot run (None when
it can); ``cli_args()`` are the ``--driver``/``-p`` arguments that reach it.
:func:`run_cli` runs ``.venv/bin/powerctl`` and times it.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from tests import snmppeer
from tests.test_ipmi_peer import CHASSIS_SCRIPT, EMU, IPMI_SIM, LAN_CONF
from tests.test_ipmi_peer import PASSWORD as IPMI_PASSWORD
from tests.test_redfish_peer import PASSWORD as REDFISH_PASSWORD
from tests.test_redfish_peer import USER as REDFISH_USER
from tests.test_redfish_peer import find_sushy as _find_sushy_on_path
from tests.test_redfish_peer import htpasswd_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The console script under test.
POWERCTL = os.environ.get("POWERCTL_BIN") or os.path.join(ROOT, ".venv", "bin", "powerctl")


def run_cli(args, timeout=90.0, stdin=None):
    """
    Run ``powerctl *args`` and return ``(exit status, stdout, stderr,
    seconds)``; the seconds include starting the process.  Raises
    ``subprocess.TimeoutExpired`` (after killing it) past ``timeout``.
    """
    started = time.monotonic()
    done = subprocess.run(
        [POWERCTL, *args], input=stdin, capture_output=True, text=True, timeout=timeout,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return done.returncode, done.stdout, done.stderr, time.monotonic() - started


def _pairs(params):
    args = []
    for key, value in params.items():
        args += ["-p", f"{key}={value}"]
    return args


def _wait(predicate, limit, what, process=None, log=None):
    deadline = time.monotonic() + limit
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: exited with {process.returncode}" + _tail(log))
        if predicate():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after {limit:g}s" + _tail(log))
        time.sleep(0.05)


def _tail(log):
    if not log or not os.path.exists(log):
        return ""
    with open(log, errors="replace") as f:
        return "\n" + f.read()[-2000:]


def _stop_group(process, grace=5.0):
    """SIGTERM the process group of ``process`` (started in its own session), then SIGKILL."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(grace)


# -- SNMP -------------------------------------------------------------------


def _ber_len(n):
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag, body):
    return bytes([tag]) + _ber_len(len(body)) + body


def _ber_oid(oid):
    out = bytes([40 * oid[0] + oid[1]])
    for arc in oid[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return _tlv(0x06, out)


def snmp_get_v2c(port, community, oid, request_id=1):
    """A minimal SNMPv2c GetRequest for one OID (the readiness probe)."""
    varbind = _tlv(0x30, _ber_oid(oid) + b"\x05\x00")
    pdu = _tlv(0xA0, _tlv(0x02, bytes([request_id])) + b"\x02\x01\x00\x02\x01\x00"
               + _tlv(0x30, varbind))
    return _tlv(0x30, b"\x02\x01\x01" + _tlv(0x04, community.encode()) + pdu)


class SnmpdPeer:
    """``snmpd`` + APC rPDU pass_persist script; outlets start off."""

    name = "snmp"
    OUTLET = 2
    STATUS_OID = (1, 3, 6, 1, 4, 1, 318, 1, 1, 12, 3, 5, 1, 1, 4)

    def __init__(self, outlets=8):
        self.peer = snmppeer.NetSnmpPeer(outlets=outlets)

    @staticmethod
    def missing():
        if snmppeer.SNMPD is None:
            return "net-snmp snmpd not installed (apt-get install snmpd)"
        return None

    @property
    def port(self):
        return self.peer.port

    def start(self, limit=10.0):
        self.peer.start()
        try:
            self.peer.wait_listening()
            self._wait_answering(limit)
        except BaseException:
            self.peer.stop()
            raise
        return self

    def _get_status(self, outlet):
        """rPDUOutletStatusOutletState of ``outlet`` by a raw v2c GET, or None."""
        request = snmp_get_v2c(self.port, self.peer.ro, self.STATUS_OID + (outlet,))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.5)
            s.sendto(request, ("127.0.0.1", self.port))
            try:
                data = s.recv(2048)
            except socket.timeout:
                return None
        # The value closes the packet: INTEGER (02 01 xx), not noSuch* (8x 00).
        if len(data) >= 3 and data[-3] == 0x02 and data[-2] == 0x01:
            return data[-1]
        return None

    def _wait_answering(self, limit):
        """snmpd starts the pass_persist script on the first request: wait until
        a GET of the outlet's status comes back with an INTEGER value."""
        _wait(lambda: self._get_status(self.OUTLET) is not None, limit, "snmpd",
              self.peer.process)

    def power(self, outlet=None):
        """The outlet's state as the PDU reports it: 'on', 'off' or None."""
        return {1: "on", 2: "off"}.get(self._get_status(outlet or self.OUTLET))

    def stop(self):
        self.peer.stop()

    def cli_params(self, **overrides):
        params = {"host": "127.0.0.1", "port": self.port, "family": "apc-rpdu",
                  "outlet": self.OUTLET, "community": self.peer.ro,
                  "write_community": self.peer.rw}
        params.update(overrides)
        return params

    def cli_args(self, **overrides):
        return ["--driver", "snmp", *_pairs(self.cli_params(**overrides))]

    def v3_params(self, **overrides):
        params = {"host": "127.0.0.1", "port": self.port, "family": "apc-rpdu",
                  "outlet": self.OUTLET, "version": "3", "user": self.peer.user,
                  "auth_protocol": "sha", "auth_key": self.peer.auth,
                  "priv_protocol": "aes", "priv_key": self.peer.priv}
        params.update(overrides)
        return params


# -- IPMI -------------------------------------------------------------------


def _udp_bound(pid, port):
    try:
        with open(f"/proc/{pid}/net/udp") as f:
            return f":{port:04X} " in f.read()
    except OSError:
        return False


def _free_udp_port():
    return snmppeer.free_udp_port()


class IpmiSimPeer:
    """``ipmi_sim`` with one BMC whose power lives in a file (starts off)."""

    name = "ipmi"
    password = IPMI_PASSWORD
    username = "admin"

    def __init__(self):
        self.dir = None
        self.process = None
        self.port = None

    @staticmethod
    def missing():
        if IPMI_SIM is None:
            return "ipmi_sim not installed (apt-get install openipmi)"
        return None

    @property
    def power_file(self):
        return os.path.join(self.dir, "power")

    def power(self):
        """The chassis power as the simulator's script keeps it: 'on'/'off'."""
        try:
            with open(self.power_file) as f:
                return "on" if f.read().strip() == "1" else "off"
        except FileNotFoundError:
            return "off"

    def start(self, limit=10.0):
        self.dir = tempfile.mkdtemp(prefix="powerctl-ipmi-sim-")
        os.makedirs(os.path.join(self.dir, "state"))
        script = os.path.join(self.dir, "chassis.sh")
        with open(script, "w") as f:
            f.write(CHASSIS_SCRIPT)
        os.chmod(script, 0o755)
        self.port = _free_udp_port()
        with open(os.path.join(self.dir, "lan.conf"), "w") as f:
            f.write(LAN_CONF.format(port=self.port, script=script, password=self.password))
        with open(os.path.join(self.dir, "sim.emu"), "w") as f:
            f.write(EMU)
        self.log = os.path.join(self.dir, "ipmi_sim.log")
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [IPMI_SIM, "-c", "lan.conf", "-f", "sim.emu", "-s", "state", "-n"],
                cwd=self.dir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait(lambda: _udp_bound(self.process.pid, self.port), limit, "ipmi_sim",
                  self.process, self.log)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        _stop_group(self.process)
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def cli_params(self, **overrides):
        params = {"host": "127.0.0.1", "port": self.port, "username": self.username,
                  "password": self.password}
        params.update(overrides)
        return params

    def cli_args(self, **overrides):
        return ["--driver", "ipmi", *_pairs(self.cli_params(**overrides))]


# -- Redfish ----------------------------------------------------------------


def find_sushy():
    """The sushy-emulator executable, or None."""
    found = _find_sushy_on_path()
    if found:
        return found
    local = os.path.join(ROOT, ".venv-peers", "bin", "sushy-emulator")
    return local if os.access(local, os.X_OK) else None


def _free_tcp_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SushyPeer:
    """
    sushy-emulator with the fake driver and one system, ``peer-a``, off.
    Basic auth is on when the emulator's Python has bcrypt (``authenticated``).
    Power changes land 1-11 s after the request (the fake driver's delay).
    """

    name = "redfish"
    username = REDFISH_USER
    password = REDFISH_PASSWORD
    system = "peer-a"
    system_uuid = "5d7e0a1b-6c4f-4d3a-9a8e-0c1b2d3e4f50"

    def __init__(self):
        self.sushy = find_sushy()
        self.dir = None
        self.process = None
        self.port = None
        self.authenticated = False

    @staticmethod
    def missing():
        if find_sushy() is None:
            return ("sushy-emulator not found: set POWERCTL_SUSHY, run 'make peers' "
                    "(.venv-peers) or put it on PATH")
        return None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self, limit=30.0):
        self.dir = tempfile.mkdtemp(prefix="powerctl-sushy-")
        self.port = _free_tcp_port()
        systems = [{"uuid": self.system_uuid, "name": self.system, "power_state": "Off",
                    "nics": [{"mac": "00:5c:52:31:3a:01", "ip": "172.22.0.101"}]}]
        config = [
            "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'",
            f"SUSHY_EMULATOR_LISTEN_PORT = {self.port}",
            "SUSHY_EMULATOR_FAKE_DRIVER = True",
            f"SUSHY_EMULATOR_STATE_DIR = {self.dir!r}",
            f"SUSHY_EMULATOR_FAKE_SYSTEMS = {systems!r}",
        ]
        line = htpasswd_line(self.sushy)
        self.authenticated = bool(line)
        if line:
            auth = os.path.join(self.dir, "htpasswd")
            with open(auth, "w") as f:
                f.write(line + "\n")
            config.append(f"SUSHY_EMULATOR_AUTH_FILE = {auth!r}")
        conf = os.path.join(self.dir, "emulator.conf")
        with open(conf, "w") as f:
            f.write("\n".join(config) + "\n")
        self.log = os.path.join(self.dir, "sushy.log")
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [self.sushy, "--config", conf], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        try:
            _wait(self._answers, limit, "sushy-emulator", self.process, self.log)
        except BaseException:
            self.stop()
            raise
        return self

    def _answers(self):
        try:
            with urllib.request.urlopen(self.url + "/redfish/v1/", timeout=1) as r:
                return r.status == 200
        except urllib.error.HTTPError:
            return True  # it answers HTTP, that is enough
        except OSError:
            return False

    def stop(self):
        _stop_group(self.process)
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def power(self):
        """The system's PowerState as the emulator reports it ('On', 'Off'...)."""
        import base64
        import json

        request = urllib.request.Request(f"{self.url}/redfish/v1/Systems/{self.system_uuid}")
        if self.authenticated:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            request.add_header("Authorization", "Basic " + token)
        with urllib.request.urlopen(request, timeout=5) as r:
            return json.load(r).get("PowerState")

    def cli_params(self, **overrides):
        params = {"url": self.url, "system": self.system}
        if self.authenticated:
            params.update(username=self.username, password=self.password)
        params.update(overrides)
        return params

    def cli_args(self, **overrides):
        return ["--driver", "redfish", *_pairs(self.cli_params(**overrides))]


PEERS = (IpmiSimPeer, SnmpdPeer, SushyPeer)


def available():
    """``(peer classes that can run, {name: reason} of those that cannot)``."""
    ok, missing = [], {}
    for cls in PEERS:
        reason = cls.missing()
        if reason is None:
            ok.append(cls)
        else:
            missing[cls.name] = reason
    return ok, missing


if __name__ == "__main__":  # python -m tests.peers: start them all, print, wait for ^C
    ok, missing = available()
    started = []
    try:
        for cls in ok:
            peer = cls().start()
            started.append(peer)
            print(f"{peer.name}: powerctl driver query {' '.join(peer.cli_args())}")
        for name, reason in missing.items():
            print(f"{name}: missing: {reason}", file=sys.stderr)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        for peer in started:
            peer.stop()
