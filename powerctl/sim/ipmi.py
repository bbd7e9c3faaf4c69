"""
An IPMI 2.0 (RMCP+) BMC simulator on the Twisted reactor.

Why not ``pyghmi.ipmi.bmc.Bmc``?  Its server shares pyghmi's process-wide
client machinery (one class-level handler table, packets processed by
whichever thread happens to call ``wait_for_rsp``), so in a process that is
also a pyghmi client -- every test and the demo -- the simulated BMC would
answer from the driver's own worker threads, and delays or hangs in the
simulator would stall the client.  Its open-session answer also claims to
accept the SHA-256 suite (17) that pyghmi proposes first while computing
SHA-1, so the client fails in RAKP2.  This simulator instead speaks the
protocol itself, one UDP port per BMC, all driven by the reactor: many BMCs
per process cost one socket each and no thread.

What it implements, as far as pyghmi's client and ``ipmitool`` use it:

* sessionless *Get Channel Authentication Capabilities*;
* RMCP+ open session, RAKP 1-4 with cipher suites 3 (HMAC-SHA1, HMAC-SHA1-96,
  AES-CBC-128) and 17 (HMAC-SHA256, HMAC-SHA256-128, AES-CBC-128); a suite
  the BMC is not configured for is refused with status 0x11, so a client
  proposing 17 falls back to 3;
* unknown user names refused in RAKP2 (status 0x0d); a wrong password is
  noticed by the client, because the RAKP2 HMAC is keyed with the BMC's own
  password;
* *Set Session Privilege*, *Close Session*, *Get Device ID*,
  *Get Chassis Status*, *Chassis Control* (off, on, cycle, reset, soft off).

Faults per BMC (:class:`Faults`, replaced at run time with ``attrs.evolve``):
``latency`` before every answer, ``hang`` (nothing is answered), ``error``
(chassis commands answer that completion code), ``drop`` (that fraction of
incoming packets is ignored).  Power changes take ``switch_delay`` seconds.
Everything the BMC saw is recorded in :class:`SimulatedBmc` for tests.

Why one module of this size: RMCP+ session set-up, its crypto and the
few commands it answers are one state machine; the size is the protocol's.
"""

import argparse
import hashlib
import hmac
import os
import random
import struct
import uuid

import attrs
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from powerctl.power import PowerState

log = Logger()

RMCP_HEADER = b"\x06\x00\xff\x07"
BMC_ADDRESS = 0x20

# Payload types (IPMI 2.0 table 13-16).
PT_IPMI = 0x00
PT_OPEN_REQUEST = 0x10
PT_OPEN_RESPONSE = 0x11
PT_RAKP1 = 0x12
PT_RAKP2 = 0x13
PT_RAKP3 = 0x14
PT_RAKP4 = 0x15

# RMCP+ status codes (table 13-15) used here.
STATUS_OK = 0x00
STATUS_INVALID_SESSION = 0x02
STATUS_UNAUTHORIZED_NAME = 0x0D
STATUS_BAD_INTEGRITY = 0x0F
STATUS_NO_CIPHER_MATCH = 0x11

CC_OK = 0x00
CC_INVALID_COMMAND = 0xC1
CC_INVALID_DATA = 0xCC


@attrs.frozen
class CipherSuite:
    """The algorithms of one RMCP+ cipher suite and the hash they use."""

    number: int
    auth: int
    integrity: int
    confidentiality: int
    digest: object
    icv_length: int


SUITES = {
    3: CipherSuite(3, auth=1, integrity=1, confidentiality=1,
                   digest=hashlib.sha1, icv_length=12),
    17: CipherSuite(17, auth=3, integrity=4, confidentiality=1,
                    digest=hashlib.sha256, icv_length=16),
}


@attrs.frozen
class Faults:
    """What is wrong with a BMC right now.  Replace, never mutate."""

    latency: float = 0.0
    hang: bool = False
    error: int | None = None
    drop: float = 0.0


@attrs.define
class Session:
    """One RMCP+ session, from open request to close (mutable protocol state)."""

    console_sid: bytes
    managed_sid: bytes
    suite: CipherSuite
    address: tuple
    rm: bytes = b""
    rc: bytes = b""
    role: int = 0
    username: bytes = b""
    k1: bytes = b""
    aes_key: bytes = b""
    established: bool = False
    out_seq: int = 0


@attrs.frozen
class Received:
    """One IPMI command the BMC handled, for tests and benches."""

    at: float
    netfn: int
    command: int
    data: bytes


def _checksum(data):
    """IPMI two's-complement checksum of ``data``."""
    return (-sum(data)) & 0xFF


def _pad_for_aes(payload):
    """Confidentiality trailer of table 13-20: pad bytes 1..n, then n."""
    need = (16 - (len(payload) + 1) % 16) % 16
    return bytes(range(1, need + 1)) + bytes([need])


class SimulatedBmc(DatagramProtocol):
    """
    One simulated BMC on one UDP port.  Its ``power``, counters and
    ``faults`` are plain attributes so tests can inspect and steer it.
    """

    def __init__(self, clock, users, power=PowerState.OFF, switch_delay=0.0,
                 faults=Faults(), suites=(3, 17), rng=None, soft_off_works=True):
        self.clock = clock
        self.users = {k.encode() if isinstance(k, str) else k:
                      v.encode() if isinstance(v, str) else v
                      for k, v in users.items()}
        self.power = PowerState(power)
        self.switch_delay = switch_delay
        self.faults = faults
        self.suites = tuple(suites)
        self.soft_off_works = soft_off_works
        self.rng = rng or random.Random()
        self.guid = uuid.uuid4().bytes
        self.sessions = {}
        self.logins = 0
        self.refused_logins = 0
        self.suites_used = []
        self.received = []
        self.power_commands = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.port = None
        self._pending_power = None
        self._delayed = set()

    # -- life cycle -----------------------------------------------------

    def startProtocol(self):
        self.port = self.transport.getHost().port

    def stopProtocol(self):
        self.cancel_timers()

    def cancel_timers(self):
        """Cancel every scheduled answer and power change (nothing leaks)."""
        for call in list(self._delayed):
            if call.active():
                call.cancel()
        self._delayed.clear()
        if self._pending_power is not None and self._pending_power.active():
            self._pending_power.cancel()
        self._pending_power = None

    # -- helpers for tests ----------------------------------------------

    @property
    def power_command_count(self):
        return len(self.power_commands)

    def commands(self, netfn=None, command=None):
        """The recorded commands, optionally only one netfn/command."""
        return [r for r in self.received
                if (netfn is None or r.netfn == netfn)
                and (command is None or r.command == command)]

    # -- datagrams --------------------------------------------------------

    def datagramReceived(self, data, address):
        """Apply faults, then dispatch: packets are parsed defensively."""
        faults = self.faults
        if faults.hang:
            return
        if faults.drop and self.rng.random() < faults.drop:
            return
        try:
            self._dispatch(bytes(data), address)
        except (IndexError, struct.error, ValueError, KeyError):
            log.debug("simulated BMC {port}: malformed packet ignored", port=self.port)

    def _send(self, packet, address):
        """Send now, or after ``latency`` (tracked, so stop() cancels it)."""
        latency = self.faults.latency
        if latency <= 0:
            self._transmit(packet, address)
            return
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

        def fire():
            self._delayed.discard(call)
            self.in_flight -= 1
            self._transmit(packet, address)

        call = self.clock.callLater(latency, fire)
        self._delayed.add(call)

    def _transmit(self, packet, address):
        if self.transport is not None:
            self.transport.write(packet, address)

    def _dispatch(self, data, address):
        if data[:4] != RMCP_HEADER or len(data) < 14:
            return
        auth_type = data[4]
        if auth_type == 0x00:
            self._sessionless(data, address)
        elif auth_type == 0x06:
            self._rmcp_plus(data, address)

    # -- IPMI 1.5 sessionless: channel authentication capabilities ------

    def _sessionless(self, data, address):
        length = data[13]
        message = data[14:14 + length]
        if len(message) < 7:
            return
        netfn, cmd = message[1] >> 2, message[5]
        if (netfn, cmd) != (0x06, 0x38):
            return
        # channel 1; IPMI 2.0 extended auth; non-null users; IPMI 2.0 support.
        body = bytes([1, 0x80, 0x04, 0x02, 0, 0, 0, 0])
        reply = self._ipmi_response(message, CC_OK, body)
        packet = RMCP_HEADER + b"\x00" + b"\x00" * 8 + bytes([len(reply)]) + reply
        self._send(packet, address)

    # -- IPMI 2.0 / RMCP+ ---------------------------------------------------

    def _rmcp_plus(self, data, address):
        ptype = data[5] & 0x3F
        length = struct.unpack("<H", data[14:16])[0]
        payload = data[16:16 + length]
        handler = {
            PT_OPEN_REQUEST: self._open_session,
            PT_RAKP1: self._rakp1,
            PT_RAKP3: self._rakp3,
        }.get(ptype)
        if handler is not None:
            handler(payload, address)
        elif ptype == PT_IPMI:
            self._session_packet(data, address)

    def _send_plain(self, ptype, payload, address):
        """An unauthenticated RMCP+ packet (session setup messages)."""
        packet = (RMCP_HEADER + bytes([0x06, ptype]) + b"\x00" * 8
                  + struct.pack("<H", len(payload)) + payload)
        self._send(packet, address)

    def _open_session(self, payload, address):
        tag, console_sid = payload[0], payload[4:8]
        proposal = (payload[12], payload[20], payload[28])
        suite = next(
            (SUITES[n] for n in self.suites
             if (SUITES[n].auth, SUITES[n].integrity, SUITES[n].confidentiality)
             == proposal),
            None,
        )
        if suite is None:
            self._send_plain(PT_OPEN_RESPONSE,
                             bytes([tag, STATUS_NO_CIPHER_MATCH, 0, 0]) + console_sid,
                             address)
            return
        managed_sid = self._new_session_id()
        self.sessions[managed_sid] = Session(console_sid, managed_sid, suite, address)
        records = b"".join(
            bytes([kind, 0, 0, 8, algo, 0, 0, 0])
            for kind, algo in enumerate((suite.auth, suite.integrity,
                                         suite.confidentiality))
        )
        self._send_plain(PT_OPEN_RESPONSE,
                         bytes([tag, STATUS_OK, 4, 0]) + console_sid + managed_sid + records,
                         address)

    def _new_session_id(self):
        while True:
            sid = os.urandom(4)
            if sid != b"\x00\x00\x00\x00" and sid not in self.sessions:
                return sid

    def _rakp1(self, payload, address):
        tag, managed_sid = payload[0], payload[4:8]
        session = self.sessions.get(managed_sid)
        if session is None:
            return
        session.rm = payload[8:24]
        session.role = payload[24]
        session.username = payload[28:28 + payload[27]]
        password = self.users.get(session.username)
        if password is None:
            self.refused_logins += 1
            del self.sessions[managed_sid]
            self._send_plain(PT_RAKP2, bytes([tag, STATUS_UNAUTHORIZED_NAME, 0, 0])
                             + session.console_sid, address)
            return
        session.rc = os.urandom(16)
        signed = (session.console_sid + managed_sid + session.rm + session.rc
                  + self.guid + bytes([session.role, len(session.username)])
                  + session.username)
        code = hmac.new(password, signed, session.suite.digest).digest()
        self._send_plain(PT_RAKP2, bytes([tag, STATUS_OK, 0, 0]) + session.console_sid
                         + session.rc + self.guid + code, address)

    def _rakp3(self, payload, address):
        tag, managed_sid = payload[0], payload[4:8]
        session = self.sessions.get(managed_sid)
        if session is None or not session.rc:
            self._send_plain(PT_RAKP4, bytes([tag, STATUS_INVALID_SESSION, 0, 0])
                             + b"\x00" * 4, address)
            return
        password = self.users[session.username]
        digest = session.suite.digest
        who = bytes([session.role, len(session.username)]) + session.username
        expected = hmac.new(password, session.rc + session.console_sid + who,
                            digest).digest()
        if payload[1] != 0 or not hmac.compare_digest(expected, payload[8:]):
            self.refused_logins += 1
            del self.sessions[managed_sid]
            self._send_plain(PT_RAKP4, bytes([tag, STATUS_BAD_INTEGRITY, 0, 0])
                             + session.console_sid, address)
            return
        sik = hmac.new(password, session.rm + session.rc + who, digest).digest()
        session.k1 = hmac.new(sik, b"\x01" * 20, digest).digest()
        session.aes_key = hmac.new(sik, b"\x02" * 20, digest).digest()[:16]
        if not session.established:
            session.established = True
            self.logins += 1
            self.suites_used.append(session.suite.number)
        icv = hmac.new(sik, session.rm + managed_sid + self.guid,
                       digest).digest()[:session.suite.icv_length]
        self._send_plain(PT_RAKP4, bytes([tag, STATUS_OK, 0, 0])
                         + session.console_sid + icv, address)

    # -- authenticated, encrypted IPMI messages ----------------------------

    def _session_packet(self, data, address):
        session = self.sessions.get(data[6:10])
        if session is None or not session.established or not data[5] & 0x40:
            return
        icv_length = session.suite.icv_length
        expected = hmac.new(session.k1, data[4:-icv_length],
                            session.suite.digest).digest()[:icv_length]
        if not hmac.compare_digest(expected, data[-icv_length:]):
            return
        length = struct.unpack("<H", data[14:16])[0]
        payload = data[16:16 + length]
        if data[5] & 0x80:
            decryptor = Cipher(algorithms.AES(session.aes_key),
                               modes.CBC(payload[:16])).decryptor()
            clear = decryptor.update(payload[16:]) + decryptor.finalize()
            payload = clear[:-(clear[-1] + 1)]
        self._ipmi_request(session, payload)

    def _ipmi_request(self, session, message):
        netfn, cmd, body = message[1] >> 2, message[5], message[6:-1]
        self.received.append(Received(self.clock.seconds(), netfn, cmd, bytes(body)))
        code, data = self._handle(session, netfn, cmd, body)
        self._send_encrypted(session, self._ipmi_response(message, code, data))
        if (netfn, cmd) == (0x06, 0x3C) and code == CC_OK:
            self.sessions.pop(session.managed_sid, None)

    def _send_encrypted(self, session, message):
        iv = os.urandom(16)
        encryptor = Cipher(algorithms.AES(session.aes_key), modes.CBC(iv)).encryptor()
        body = iv + encryptor.update(message + _pad_for_aes(message)) + encryptor.finalize()
        session.out_seq += 1
        packet = (RMCP_HEADER + bytes([0x06, 0xC0 | PT_IPMI]) + session.console_sid
                  + struct.pack("<I", session.out_seq) + struct.pack("<H", len(body))
                  + body)
        pad = (4 - (len(packet) - 2) % 4) % 4
        packet += b"\xff" * pad + bytes([pad, 0x07])
        packet += hmac.new(session.k1, packet[4:], session.suite.digest
                           ).digest()[:session.suite.icv_length]
        self._send(packet, session.address)

    @staticmethod
    def _ipmi_response(request, code, data):
        """Answer to ``request``: addresses swapped, netfn+1, seq echoed."""
        rq_addr, netfn_lun, rq_seq, cmd = request[3], request[1], request[4], request[5]
        header = bytes([rq_addr, ((netfn_lun >> 2) + 1) << 2 | (rq_seq & 0x03)])
        body = bytes([BMC_ADDRESS, rq_seq, cmd, code]) + bytes(data)
        return header + bytes([_checksum(header)]) + body + bytes([_checksum(body)])

    # -- commands ----------------------------------------------------------

    def _handle(self, session, netfn, cmd, body):
        """Return (completion code, data) for one command."""
        if netfn == 0x06:
            if cmd == 0x3B:  # set session privilege level
                wanted = body[0] & 0x0F if body else 0
                return CC_OK, bytes([wanted or (session.role & 0x0F) or 4])
            if cmd == 0x3C:  # close session
                return CC_OK, b""
            if cmd == 0x01:  # get device id
                return CC_OK, bytes([0x20, 0x01, 0x01, 0x00, 0x02, 0x00,
                                     0x00, 0x00, 0x00, 0x00, 0x00])
        if netfn == 0x00 and cmd in (0x01, 0x02):
            if self.faults.error is not None:
                return self.faults.error, b""
            if cmd == 0x01:
                return CC_OK, bytes([1 if self.power == PowerState.ON else 0, 0, 0, 0])
            return self._chassis_control(body)
        return CC_INVALID_COMMAND, b""

    def _chassis_control(self, body):
        if not body or body[0] not in (0, 1, 2, 3, 5):
            return CC_INVALID_DATA, b""
        directive = body[0]
        self.power_commands.append((self.clock.seconds(), directive))
        if directive == 1:
            self._switch(PowerState.ON)
        elif directive == 0:
            self._switch(PowerState.OFF)
        elif directive == 5 and self.soft_off_works:
            self._switch(PowerState.OFF)
        elif directive in (2, 3) and self.power == PowerState.ON:
            self._switch(PowerState.OFF, then=PowerState.ON)
        return CC_OK, b""

    def _switch(self, target, then=None):
        """Reach ``target`` after ``switch_delay`` (a cycle then goes on)."""
        if self._pending_power is not None and self._pending_power.active():
            self._pending_power.cancel()
        self._pending_power = None

        def arrive():
            self._pending_power = None
            self.power = target
            if then is not None:
                self._switch(then)

        if self.switch_delay <= 0:
            arrive()
        else:
            self._pending_power = self.clock.callLater(self.switch_delay, arrive)


@attrs.define
class IpmiSimulator:
    """A set of simulated BMCs, one UDP port each, sharing one reactor."""

    bmcs: list
    listeners: list

    @property
    def ports(self):
        return [b.port for b in self.bmcs]

    @property
    def port(self):
        return self.bmcs[0].port

    @property
    def state(self):
        """Power state per port, as strings (what a CLI would print)."""
        return {b.port: b.power.value for b in self.bmcs}

    def bmc(self, port=None):
        """The BMC on ``port`` (the first one by default)."""
        if port is None:
            return self.bmcs[0]
        return next(b for b in self.bmcs if b.port == port)

    def stop(self):
        """Close every port and cancel every timer; a Deferred."""
        for bmc in self.bmcs:
            bmc.cancel_timers()
        return defer.gatherResults(
            [defer.maybeDeferred(p.stopListening) for p in self.listeners],
            consumeErrors=True,
        ).addCallback(lambda _: None)


def add_arguments(parser):
    """Options of ``powerctl sim ipmi``."""
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (loopback by default)")
    parser.add_argument("--port", type=int, default=0,
                        help="first UDP port; 0 picks free ports")
    parser.add_argument("--count", type=int, default=1, help="number of BMCs")
    parser.add_argument("--username", default="admin")
    parser.add_argument("--password", default="password")
    parser.add_argument("--power", choices=("on", "off"), default="off",
                        help="initial power state")
    parser.add_argument("--switch-delay", type=float, default=0.0,
                        help="seconds a power change takes")
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds before every answer")
    parser.add_argument("--hang", action="store_true", help="never answer")
    parser.add_argument("--error", type=lambda s: int(s, 0), default=None,
                        help="completion code for chassis commands, e.g. 0xc0")
    parser.add_argument("--drop", type=float, default=0.0,
                        help="fraction of packets to drop")
    parser.add_argument("--suites", default="3,17",
                        help="cipher suites accepted (3 and/or 17)")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed of the drop fault")
    return parser


def _parse_suites(text):
    suites = tuple(int(s) for s in str(text).split(",") if s.strip())
    unknown = [s for s in suites if s not in SUITES]
    if unknown or not suites:
        raise ValueError(f"cipher suites must be among {sorted(SUITES)}")
    return suites


def start(reactor, options):
    """
    Start ``options.count`` BMCs as described by ``options`` (see
    :func:`add_arguments`; missing attributes take their defaults) and
    return the :class:`IpmiSimulator`.
    """
    defaults = add_arguments(argparse.ArgumentParser()).parse_args([])
    opts = {**vars(defaults), **vars(options)} if not isinstance(options, dict) \
        else {**vars(defaults), **options}
    suites = _parse_suites(opts["suites"])
    faults = Faults(latency=opts["latency"], hang=opts["hang"],
                    error=opts["error"], drop=opts["drop"])
    rng = random.Random(opts["seed"])
    bmcs, listeners = [], []
    for index in range(opts["count"]):
        bmc = SimulatedBmc(
            reactor, {opts["username"]: opts["password"]}, power=opts["power"],
            switch_delay=opts["switch_delay"], faults=faults, suites=suites,
            rng=random.Random(rng.random()),
        )
        port = opts["port"] + index if opts["port"] else 0
        listeners.append(reactor.listenUDP(port, bmc, interface=opts["host"]))
        bmcs.append(bmc)
    return IpmiSimulator(bmcs, listeners)

