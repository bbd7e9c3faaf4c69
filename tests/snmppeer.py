"""
A standard SNMP peer for tests: Debian's net-snmp ``snmpd`` on 127.0.0.1,
emulating an APC Switched Rack PDU (PowerNet-MIB rPDU outlet tables)
through a ``pass_persist`` script.

Nothing of ours answers the packets: snmpd parses them, checks the
communities (``rocommunity``/``rwcommunity``) and the SNMPv3 user
(``createUser`` + ``rwuser``), and only hands the OID work to the script,
which keeps the outlet states in memory.  The script applies SETs the way
the PDU does: ``rPDUOutletControlOutletCommand`` immediateOn(1) /
immediateOff(2) / immediateReboot(3) change ``rPDUOutletStatusOutletState``.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

SNMPD = shutil.which("snmpd") or ("/usr/sbin/snmpd" if os.path.exists("/usr/sbin/snmpd") else None)

#: The pass_persist handler; runs under the system Python, no imports beyond stdlib.
PASS_SCRIPT = r'''
import sys
BASE = (1, 3, 6, 1, 4, 1, 318, 1, 1, 12, 3)
STATUS = BASE + (5, 1, 1, 4)   # rPDUOutletStatusOutletState
CONTROL = BASE + (3, 1, 1, 4)  # rPDUOutletControlOutletCommand
OUTLETS = int(sys.argv[1])
state = {n: 2 for n in range(1, OUTLETS + 1)}  # all off

def oids():
    return sorted([CONTROL + (n,) for n in state] + [STATUS + (n,) for n in state])

def parse(text):
    return tuple(int(p) for p in text.strip().strip(".").split(".") if p)

def value(oid):
    return state[oid[-1]]

def reply(*lines):
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()

while True:
    line = sys.stdin.readline()
    if not line:
        break
    cmd = line.strip()
    if not cmd:
        continue  # snmpd ends a SET value with a blank line: no answer expected
    if cmd == "PING":
        reply("PONG")
    elif cmd == "get":
        oid = parse(sys.stdin.readline())
        if oid in oids():
            reply("." + ".".join(map(str, oid)), "integer", str(value(oid)))
        else:
            reply("NONE")
    elif cmd == "getnext":
        oid = parse(sys.stdin.readline())
        nxt = [o for o in oids() if o > oid]
        if nxt:
            reply("." + ".".join(map(str, nxt[0])), "integer", str(value(nxt[0])))
        else:
            reply("NONE")
    elif cmd == "set":
        oid = parse(sys.stdin.readline())
        kind, _, raw = sys.stdin.readline().strip().partition(" ")
        if oid[:-1] != CONTROL or oid[-1] not in state:
            reply("not-writable")
        elif kind != "integer":
            reply("wrong-type")
        elif raw.strip() not in ("1", "2", "3"):
            reply("wrong-value")
        else:
            v = int(raw)
            state[oid[-1]] = 1 if v in (1, 3) else 2
            reply("DONE")
    else:
        reply("NONE")
'''

CONF = """\
agentAddress udp:127.0.0.1:{port}
rocommunity {ro} 127.0.0.1
rwcommunity {rw} 127.0.0.1
createUser {user} SHA "{auth}" AES "{priv}"
rwuser {user} priv
pass_persist .1.3.6.1.4.1.318.1.1.12.3 {python} {script} {outlets}
"""


def free_udp_port():
    """A UDP port free right now on 127.0.0.1 (snmpd needs a number)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NetSnmpPeer:
    """One ``snmpd`` process in a private temporary directory."""

    def __init__(self, outlets=8, ro="public", rw="private", user="ops",
                 auth="authpass-123", priv="privpass-456"):
        self.outlets = outlets
        self.ro, self.rw = ro, rw
        self.user, self.auth, self.priv = user, auth, priv
        self.port = None
        self.process = None
        self.dir = None

    def start(self):
        """Write the config, start snmpd in the foreground; returns self."""
        self.dir = tempfile.mkdtemp(prefix="powerctl-snmpd-")
        script = os.path.join(self.dir, "apc_pass.py")
        with open(script, "w") as f:
            f.write(PASS_SCRIPT)
        self.port = free_udp_port()
        conf = os.path.join(self.dir, "snmpd.conf")
        with open(conf, "w") as f:
            f.write(CONF.format(
                port=self.port, ro=self.ro, rw=self.rw, user=self.user, auth=self.auth,
                priv=self.priv, python=sys.executable if not os.path.exists("/usr/bin/python3")
                else "/usr/bin/python3", script=script, outlets=self.outlets,
            ))
        env = dict(os.environ, MIBS="", SNMP_PERSISTENT_DIR=self.dir, SNMPCONFPATH=self.dir)
        self.log = open(os.path.join(self.dir, "snmpd.log"), "w")
        self.process = subprocess.Popen(
            [SNMPD, "-f", "-Lo", "-C", "-c", conf, "-p", os.path.join(self.dir, "snmpd.pid")],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )
        return self

    def stop(self):
        """Terminate snmpd (bounded) and remove its directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.dir:
            self.log.close()
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def wait_listening(self, limit=5.0):
        """Block until snmpd has bound its port (it does so within ms)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("snmpd exited early; see its log")
            with open(f"/proc/{self.process.pid}/net/udp") as f:
                if f":{self.port:04X} " in f.read():
                    return
            time.sleep(0.02)
        raise RuntimeError("snmpd did not start listening")
