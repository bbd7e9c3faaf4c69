"""
The ``snmp`` power driver: switched PDU outlets over SNMP v1, v2c and v3.

What an outlet is, and which SET switches it, comes from the data table in
:mod:`powerctl.drivers.snmp_families`; this module only speaks SNMP.

pysnmp 7 is asyncio only.  Every call is an asyncio coroutine bridged with
``Deferred.fromFuture(asyncio.ensure_future(coro))``: cancelling the
Deferred cancels the asyncio task, pysnmp drops the answer if one comes
later, and nothing per call survives (no socket, no Twisted timer).

One :class:`~pysnmp.entity.engine.SnmpEngine` per driver type, created on
first use (the loop must be running then), holds one UDP socket shared by
every call to every PDU; :meth:`SnmpDriverType.close` closes its dispatcher
and socket.

Reads with a community (v1, v2c) -- every poll -- do not go through
pysnmp: :mod:`powerctl.drivers.snmp_ber` encodes the GET and decodes the
answer, on one UDP socket per address family of the driver type, answers
matched by request-id and source address, retransmitted ``retries`` times
every ``timeout`` seconds.  In a sweep of 10,000 outlets pysnmp's generic
machinery was most of the pserv's CPU (bench/RESULTS.md).  Each status
OID is encoded once and kept.

SETs, walks and every SNMPv3 request go through pysnmp.  GETs and SETs use
its RFC 3413 command generators with numeric OIDs rather than
``get_cmd``/``set_cmd``: those resolve every OID through a MIB view on
every call (``lookupMib=False`` only skips resolving the *response*).  The
pysnmp credentials and transport of a PDU whose host is an IP address are
built once and kept; a host name is resolved on every call, so a DNS
change is seen at once (on both paths).

A batched query asks for every requested outlet of a PDU in one GET (up to
:data:`MAX_VARBINDS`).  An agent whose buffer cannot hold the answer says
``tooBig``: the request is then split in halves until it fits, and the size
that fitted is remembered for that PDU, so later sweeps go straight to it.
An agent that stays silent to a GET of more than :data:`SAFE_VARBINDS`
(some drop what they cannot hold) is asked again in GETs of that size, and
that too is remembered.

Parameters (see :data:`SCHEMA`)
-------------------------------
``community`` is used for reads; ``write_community`` for SETs and defaults
to ``community`` when not given (many PDUs use one read-write community).
``timeout``/``retries`` are pysnmp's per-request timeout and
retransmissions; the driver's :class:`~powerctl.drivers.interface.Timing`
bounds the whole call and retries on top, so keep
``Timing.timeout >= timeout * (retries + 1)``.

Error mapping
-------------
* no answer -> :class:`PowerTimeout` (with v1/v2c a wrong community is
  silently dropped by agents, so it looks the same; the message says so);
* v3 unknown user, wrong digest, decryption failure ->
  :class:`AuthenticationError`;
* ``noAccess``/``authorizationError``/``notWritable``/``readOnly`` on a
  SET -> :class:`AuthenticationError` (the community or user may not write);
* host that does not resolve -> :class:`UnreachableError`;
* anything else (other error status, missing OID, unexpected value) ->
  :class:`ProtocolError`.
Secrets never appear in messages or logs.
"""

import asyncio
import ipaddress
import random
import socket

import attrs
from pysnmp.entity import config as snmp_config
from pysnmp.error import PySnmpError
from pysnmp.entity.rfc3413 import cmdgen
from pysnmp.hlapi.v3arch import asyncio as hlapi
from pysnmp.hlapi.v3arch.asyncio.lcd import CommandGeneratorLcdConfigurator
from pysnmp.proto import errind, rfc1902
from pysnmp.proto.api import v2c
from pysnmp.proto.rfc1905 import EndOfMibView, NoSuchInstance, NoSuchObject
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from powerctl.drivers import snmp_ber, snmp_families
from powerctl.drivers.base import Command, VerifyingDriver
from powerctl.drivers.bmclimit import address_of
from powerctl.drivers.errors import (
    AuthenticationError,
    InvalidParameters,
    PowerTimeout,
    ProtocolError,
    UnreachableError,
    UnsupportedError,
)
from powerctl.drivers.interface import Capabilities, IDriverType, Timing
from powerctl.drivers.schema import Param, Schema
from powerctl.power import PowerState

AUTH_PROTOCOLS = {
    "none": snmp_config.USM_AUTH_NONE,
    "md5": snmp_config.USM_AUTH_HMAC96_MD5,
    "sha": snmp_config.USM_AUTH_HMAC96_SHA,
    "sha224": snmp_config.USM_AUTH_HMAC128_SHA224,
    "sha256": snmp_config.USM_AUTH_HMAC192_SHA256,
    "sha384": snmp_config.USM_AUTH_HMAC256_SHA384,
    "sha512": snmp_config.USM_AUTH_HMAC384_SHA512,
}

PRIV_PROTOCOLS = {
    "none": snmp_config.USM_PRIV_NONE,
    "des": snmp_config.USM_PRIV_CBC56_DES,
    "3des": snmp_config.USM_PRIV_CBC168_3DES,
    "aes": snmp_config.USM_PRIV_CFB128_AES,
    "aes192": snmp_config.USM_PRIV_CFB192_AES,
    "aes256": snmp_config.USM_PRIV_CFB256_AES,
}

#: USM requires pass phrases of at least 8 characters (RFC 3414 2.6).
MIN_KEY_LENGTH = 8
#: Varbinds per GET when querying many outlets: every outlet of any usual
#: PDU in one request.  An agent that cannot answer that many says tooBig
#: and the driver splits the request (see the module doc).
MAX_VARBINDS = 128
#: Varbinds asked for per GETBULK of a walk (the answer stays under 1472 bytes).
BULK_REPETITIONS = 48
#: Varbinds per GET after a bigger one went unanswered (the answer stays
#: under 1472 bytes: what the driver always asked for before, see the module doc).
SAFE_VARBINDS = 48
#: PDUs whose pysnmp credentials and transport are kept (IP hosts only);
#: past this the cache starts again, so settings changed by operators
#: cannot make it grow without bound.
MAX_ENDPOINTS = 20_000

#: an agent's capabilities, by whether its family reboots natively (shared objects)
_CAPABILITIES = {
    reboots: Capabilities(queryable=True, soft_off=False, native_cycle=reboots)
    for reboots in (False, True)
}

_WRITE_REFUSED = {"noAccess", "authorizationError", "notWritable", "readOnly"}
_AUTH_INDICATIONS = (
    errind.UnknownUserName,
    errind.WrongDigest,
    errind.DecryptionError,
    errind.AuthenticationError,
    errind.AuthenticationFailure,
    errind.UnknownSecurityName,
    errind.UnsupportedSecurityLevel,
    errind.UnknownCommunityName,
)


class SnmpSchema(Schema):
    """The declared parameters plus the rules that tie them together."""

    def validate(self, params):
        result = super().validate(params)
        check_cross_fields(result, self.driver)
        return result


def _require_key(settings, key, protocol, driver):
    """A key is required (and long enough) when its protocol is not none."""
    if settings[protocol] == "none":
        return
    value = settings[key]
    if not value:
        raise InvalidParameters(key, f"is required when {protocol} is {settings[protocol]}", driver)
    if len(value) < MIN_KEY_LENGTH:
        raise InvalidParameters(key, f"must be at least {MIN_KEY_LENGTH} characters", driver)


def check_cross_fields(settings, driver="snmp"):
    """
    The rules one parameter cannot check alone; raises
    :class:`InvalidParameters` before anything is sent.
    """
    family = snmp_families.get(settings["family"])
    try:
        family.index.index(settings["unit"], settings["outlet"])
    except ValueError as e:
        raise InvalidParameters("unit", f"{e} (family {family.name})", driver) from None
    if settings["version"] != "3":
        return
    if not settings["user"]:
        raise InvalidParameters("user", "is required with version 3", driver)
    _require_key(settings, "auth_key", "auth_protocol", driver)
    _require_key(settings, "priv_key", "priv_protocol", driver)
    if settings["priv_protocol"] != "none" and settings["auth_protocol"] == "none":
        raise InvalidParameters("priv_protocol", "privacy needs an auth_protocol", driver)


SCHEMA = SnmpSchema(
    driver="snmp",
    params=(
        Param("host", "host", required=True, help="PDU address or host name"),
        Param("port", "port", default=161),
        Param("family", "str", required=True, choices=snmp_families.NAMES,
              help="PDU family (OIDs and values), see snmp_families"),
        Param("outlet", "int", required=True, minimum=1, help="outlet number, from 1"),
        Param("unit", "int", default=1, minimum=1,
              help="PDU in a daisy-chain / module (families with units)"),
        Param("version", "str", default="2c", choices=("1", "2c", "3")),
        Param("community", "str", default="public", secret=True, help="read community"),
        Param("write_community", "str", secret=True,
              help="community for SETs; defaults to community"),
        Param("user", "str", help="SNMPv3 user"),
        Param("auth_protocol", "str", default="sha", choices=tuple(AUTH_PROTOCOLS)),
        Param("auth_key", "str", secret=True),
        Param("priv_protocol", "str", default="none", choices=tuple(PRIV_PROTOCOLS)),
        Param("priv_key", "str", secret=True),
        Param("timeout", "float", default=2.0, minimum=0.05,
              help="seconds per SNMP request before pysnmp retransmits"),
        Param("retries", "int", default=1, minimum=0, help="SNMP retransmissions"),
    ),
)


@attrs.frozen
class Target:
    """Where and how to reach one PDU (no outlet): the unit of batching."""

    host: str
    port: int
    version: str
    community: str = attrs.field(repr=False)
    write_community: str = attrs.field(repr=False)
    user: str | None
    auth_protocol: str
    auth_key: str | None = attrs.field(repr=False)
    priv_protocol: str
    priv_key: str | None = attrs.field(repr=False)
    timeout: float
    retries: int

    @classmethod
    def from_settings(cls, s):
        return cls(
            host=s["host"], port=s["port"], version=s["version"],
            community=s["community"], write_community=s["write_community"] or s["community"],
            user=s["user"], auth_protocol=s["auth_protocol"], auth_key=s["auth_key"],
            priv_protocol=s["priv_protocol"], priv_key=s["priv_key"],
            timeout=s["timeout"], retries=s["retries"],
        )

    def describe(self):
        return f"snmp {self.host}:{self.port} (v{self.version})"

    def is_literal(self):
        """True if ``host`` is an IP address (nothing to resolve, so a transport can be kept)."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def auth_data(self, write):
        """pysnmp credentials for a read or a write."""
        if self.version == "3":
            return hlapi.UsmUserData(
                self.user,
                authKey=self.auth_key if self.auth_protocol != "none" else None,
                privKey=self.priv_key if self.priv_protocol != "none" else None,
                authProtocol=AUTH_PROTOCOLS[self.auth_protocol],
                privProtocol=PRIV_PROTOCOLS[self.priv_protocol],
            )
        community = self.write_community if write else self.community
        return hlapi.CommunityData(community, mpModel=0 if self.version == "1" else 1)

    async def transport(self):
        """The pysnmp transport target (resolves host names)."""
        cls = hlapi.UdpTransportTarget
        try:
            if ipaddress.ip_address(self.host).version == 6:
                cls = hlapi.Udp6TransportTarget
        except ValueError:
            pass
        try:
            return await cls.create(
                (self.host, self.port), timeout=self.timeout, retries=self.retries
            )
        except PySnmpError as e:
            raise UnreachableError(f"{self.describe()}: cannot resolve host: {e}") from None


class TooBig(ProtocolError):
    """The agent could not fit the answer in one message (error status tooBig)."""


def _failure(target, what, indication, status, oid, write):
    """
    Translate an answer into the error taxonomy: ``indication`` (pysnmp's
    error indication) or ``status`` (the error-status name) at ``oid``
    (dotted text); None if neither.
    """
    where = f"{target.describe()} {what}"
    if indication:
        if isinstance(indication, errind.RequestTimedOut):
            hint = "" if target.version == "3" else " (with v1/v2c a wrong community looks like this)"
            return PowerTimeout(
                f"{where}: no response within {target.timeout:g}s x{target.retries + 1}{hint}"
            )
        if isinstance(indication, _AUTH_INDICATIONS):
            return AuthenticationError(f"{where}: credentials refused ({type(indication).__name__})")
        return ProtocolError(f"{where}: {indication}")
    if status and status != "noError":
        name = status
        if name in _WRITE_REFUSED or (write and name == "noSuchName" and target.version == "1"):
            who = "user" if target.version == "3" else ("write community" if write else "community")
            return AuthenticationError(
                f"{where}: the PDU refused access to {oid} ({name}); "
                f"does the {who} have {'write' if write else 'read'} access?"
            )
        if name == "tooBig":
            return TooBig(f"{where}: error status tooBig (the answer does not fit the agent's"
                          " message size)")
        return ProtocolError(f"{where}: error status {name} at {oid}")
    return None


def _pysnmp_failure(target, what, indication, status, index, var_binds, write):
    """:func:`_failure` of a pysnmp answer ``(indication, status, index, var binds)``."""
    name = status.prettyPrint() if status else None
    oid = var_binds[int(index) - 1][0].prettyPrint() if index and var_binds else "?"
    return _failure(target, what, indication, name, oid, write)


def _is_missing(value):
    return value in snmp_ber.MISSING if isinstance(value, snmp_ber.MISSING_TYPE) \
        else isinstance(value, (NoSuchObject, NoSuchInstance, EndOfMibView))


def _community_bytes(community):
    """A community as pysnmp sends it (Latin-1), or UTF-8 if it is not Latin-1."""
    try:
        return community.encode("latin-1")
    except UnicodeEncodeError:
        return community.encode("utf-8")


async def _address(target):
    """``(socket address, address family)`` of ``target``; UnreachableError if unresolvable."""
    try:
        ip = ipaddress.ip_address(target.host)
    except ValueError:
        pass
    else:
        if ip.version == 6:
            return (str(ip), target.port), socket.AF_INET6
        return (str(ip), target.port), socket.AF_INET
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            target.host, target.port, type=socket.SOCK_DGRAM)
    except OSError as e:
        raise UnreachableError(f"{target.describe()}: cannot resolve host: {e}") from None
    family, _, _, _, address = infos[0]
    return address[:2], family


class _Datagrams(asyncio.DatagramProtocol):
    """
    One UDP socket for every community GET of a driver type.  An answer is
    matched to its request by request-id and source address; anything else
    (a late answer to a request given up, a stray or damaged datagram) is
    dropped, as a retransmission may still complete the request.
    """

    def __init__(self):
        self.transport = None
        self._pending = {}  # request-id -> (Future, address)

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, address):
        try:
            response = snmp_ber.decode_response(data)
        except snmp_ber.BerError:
            return
        waiting = self._pending.get(response.request_id)
        if waiting is not None and tuple(address[:2]) == waiting[1] and not waiting[0].done():
            waiting[0].set_result(response)

    def error_received(self, exc):
        pass  # an unconnected socket cannot tell which request it was: the timeout will

    async def exchange(self, message, request_id, address, timeout, retries):
        """Send ``message``, resend on silence; the :class:`Response`, or None if none came."""
        loop = asyncio.get_running_loop()
        for _ in range(retries + 1):
            answer = loop.create_future()
            self._pending[request_id] = (answer, address)
            try:
                self.transport.sendto(message, address)
                return await asyncio.wait_for(answer, timeout)
            except asyncio.TimeoutError:
                continue
            finally:
                self._pending.pop(request_id, None)
        return None


@implementer(IDriverType)
class SnmpDriverType:
    """
    The ``snmp`` driver type.  Holds the shared SNMP engine; builds one
    :class:`SnmpOutletDriver` per agent and answers batched queries.
    """

    name = "snmp"
    schema = SCHEMA
    log = Logger()
    capabilities = Capabilities(queryable=True, soft_off=False, native_cycle=True)

    def __init__(self, clock=None, timing=Timing(), limiter=None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.timing = timing
        self.limiter = limiter  # per-PDU limits (powerctl.drivers.bmclimit), or None
        self._engine = None
        self._lcd = CommandGeneratorLcdConfigurator()
        self._endpoints = {}  # (Target, write) -> (pysnmp auth data, transport target)
        self._fits = {}  # (host, port) -> varbinds per GET that fitted after a tooBig
        self._encoded = {}  # OID tuple -> its BER encoding, built once
        self._targets = {}  # Target -> the one equal Target every outlet driver shares
        self._handles = {}  # PDU address -> its limiter handle, shared likewise
        self._sockets = {}  # address family -> Future of a _Datagrams (community GETs)
        self._request_ids = random.SystemRandom().randrange(1, 2**30)

    # -- the shared engine ---------------------------------------------

    def _snmp_engine(self):
        """The engine, created while the loop runs (pysnmp needs that)."""
        if self._engine is None:
            self._engine = hlapi.SnmpEngine()
        return self._engine

    def close(self):
        """Close the engine's dispatcher and socket; a Deferred."""
        engine, self._engine = self._engine, None
        self._endpoints.clear()
        if engine is not None:
            engine.close_dispatcher()
        sockets, self._sockets = self._sockets, {}
        for opening in sockets.values():  # one still opening closes when it is open
            if opening.done() and not opening.cancelled() and opening.exception() is None:
                opening.result()[0].close()
        return _bridge(_settle())

    # -- IDriverType ----------------------------------------------------

    def bind(self, settings):
        driver = SnmpOutletDriver(self, settings, self.clock, self.timing)
        if self.limiter is not None:
            driver.bmc = self._shared_handle(driver.target)
        return driver

    def shared_target(self, settings):
        """
        The :class:`Target` of ``settings``, one object for every outlet of a
        PDU (with the same credentials): a pserv binds a driver per outlet,
        50 per PDU, and would otherwise keep 50 equal targets.
        """
        target = Target.from_settings(settings)
        shared = self._targets.get(target)
        if shared is None:
            if len(self._targets) >= MAX_ENDPOINTS:
                self._targets.clear()  # settings changed by operators cannot grow it forever
            shared = self._targets[target] = target
        return shared

    def _shared_handle(self, target):
        """The per-PDU limiter handle, one per PDU address (as the target, shared)."""
        address = address_of(target.host, target.port)
        handle = self._handles.get(address)
        if handle is None:
            if len(self._handles) >= MAX_ENDPOINTS:
                self._handles.clear()
            handle = self._handles[address] = self.limiter.handle(address)
        return handle

    def capabilities_for(self, settings):
        """Capabilities of one agent: native cycle only if the family reboots (shared)."""
        family = snmp_families.get(settings["family"])
        return _CAPABILITIES[family.reboot is not None]

    # -- protocol primitives (coroutines) -------------------------------

    async def _endpoint(self, target, write):
        """pysnmp credentials and transport target of ``target`` (kept for IP hosts)."""
        key = (target, write)
        found = self._endpoints.get(key)
        if found is not None:
            return found
        found = (target.auth_data(write), await target.transport())
        if target.is_literal():
            if len(self._endpoints) >= MAX_ENDPOINTS:
                self._endpoints.clear()
            self._endpoints[key] = found
        return found

    async def _request(self, generator, target, var_binds, write):
        """
        One request of ``generator`` (an RFC 3413 command generator) with
        ready-made ``(ObjectName, value)`` pairs: ``(error indication,
        error status, error index, [(name, value), ...])``.
        """
        engine = self._snmp_engine()
        auth, transport = await self._endpoint(target, write)
        addr_name, _ = self._lcd.configure(engine, auth, transport, b"")
        future = asyncio.get_running_loop().create_future()
        generator.send_varbinds(engine, addr_name, None, b"", var_binds, _settle_future, future)
        return await future

    async def get(self, target, oids, what="get"):
        """GET ``oids`` in one request: ``[(oid tuple, value), ...]``."""
        if target.version != "3":
            return await self._community_get(target, oids, what)
        result = await self._request(
            cmdgen.GetCommandGenerator(), target,
            [(rfc1902.ObjectName(oid), v2c.null) for oid in oids], write=False)
        failure = _pysnmp_failure(target, what, *result, write=False)
        if failure:
            raise failure
        return [(tuple(name), value) for name, value in result[3]]

    # -- community GETs without pysnmp (see the module doc) ---------------

    async def _community_get(self, target, oids, what):
        address, family = await _address(target)
        datagrams = await self._socket(family)
        self._request_ids = request_id = self._request_ids % 0x7FFFFFFF + 1
        encoded = []
        for oid in oids:
            code = self._encoded.get(oid)
            if code is None:
                code = self._encoded[oid] = snmp_ber.encode_oid(oid)
            encoded.append(code)
        message = snmp_ber.encode_get(0 if target.version == "1" else 1,
                                      _community_bytes(target.community), request_id, encoded)
        response = await datagrams.exchange(message, request_id, address, target.timeout,
                                            target.retries)
        if response is None:
            raise _failure(target, what, errind.requestTimedOut, None, "?", write=False)
        if response.error_status:
            index = response.error_index
            oid = ".".join(map(str, oids[index - 1])) if 0 < index <= len(oids) else "?"
            raise _failure(target, what, None, response.status_name, oid, write=False)
        if [name for name, _ in response.var_binds] != list(oids):
            raise ProtocolError(f"{target.describe()} {what}: the answer names other "
                                "variables than the request")
        return list(response.var_binds)

    async def _socket(self, family):
        """
        The :class:`_Datagrams` of ``family``, opened on first use.  Opening
        is a task of its own: a caller cancelled meanwhile leaves it to the
        others (and to the next caller).
        """
        opening = self._sockets.get(family)
        if opening is None:
            loop = asyncio.get_running_loop()
            opening = self._sockets[family] = asyncio.ensure_future(
                loop.create_datagram_endpoint(_Datagrams, family=family))
            opening.add_done_callback(lambda done: self._opened(family, done))
        _, protocol = await asyncio.shield(opening)
        return protocol

    def _opened(self, family, opening):
        """A socket opened, or failed to: forget a failure; close one :meth:`close` dropped."""
        if opening.cancelled() or opening.exception() is not None:
            if self._sockets.get(family) is opening:
                del self._sockets[family]  # the next call tries again
        elif self._sockets.get(family) is not opening:
            opening.result()[0].close()

    async def set(self, target, oid, value, what="set"):
        """SET one Integer32 with the write credentials."""
        result = await self._request(
            cmdgen.SetCommandGenerator(), target,
            [(rfc1902.ObjectName(oid), rfc1902.Integer32(value))], write=True)
        failure = _pysnmp_failure(target, what, *result, write=True)
        if failure:
            raise failure

    async def walk(self, target, column, what="walk"):
        """Every ``(oid, value)`` under ``column`` (GETBULK, or GETNEXT with v1)."""
        transport = await target.transport()
        out, start = [], tuple(column)
        while True:
            if target.version == "1":
                result = await hlapi.next_cmd(
                    self._snmp_engine(), target.auth_data(write=False), transport,
                    hlapi.ContextData(), hlapi.ObjectType(hlapi.ObjectIdentity(start)),
                    lookupMib=False,
                )
            else:
                result = await hlapi.bulk_cmd(
                    self._snmp_engine(), target.auth_data(write=False), transport,
                    hlapi.ContextData(), 0, BULK_REPETITIONS,
                    hlapi.ObjectType(hlapi.ObjectIdentity(start)), lookupMib=False,
                )
            indication, status, index, var_binds = result
            if status and status.prettyPrint() == "noSuchName":
                return out  # v1 end of MIB
            failure = _pysnmp_failure(target, what, indication, status, index, var_binds,
                                      write=False)
            if failure:
                raise failure
            for name, value in var_binds:
                name = tuple(name)
                if name[: len(column)] != tuple(column) or _is_missing(value):
                    return out
                out.append((name, value))
            if not var_binds:
                return out
            start = out[-1][0]

    # -- batched query for the poller ------------------------------------

    def query_outlets(self, settings, outlets=None):
        """
        The state of many outlets of one PDU: a Deferred firing with
        ``{outlet: PowerState}``.  With ``outlets`` given, one GET carries
        them all (chunks of :data:`MAX_VARBINDS`); with None, the status
        column of ``settings['unit']`` is walked with GETBULK.  ``settings``
        are validated settings of any outlet of that PDU.  Outlets the PDU
        does not have read as UNKNOWN.  Bounded by ``timing.timeout``.
        """
        from powerctl.drivers.base import bounded

        target = Target.from_settings(settings)
        family = snmp_families.get(settings["family"])
        what = f"{target.describe()} query outlets"
        if self.limiter is None:
            coro = self._query_outlets(target, family, settings["unit"], outlets)
            return bounded(_bridge(coro), self.timing.timeout, self.clock, what)
        return defer.ensureDeferred(self._limited_query(
            address_of(settings["host"], settings["port"]), target, family,
            settings["unit"], outlets, what))

    async def _limited_query(self, address, target, family, unit, outlets, what):
        """The batched query under the PDU's per-device limit (one slot for the batch)."""
        from powerctl.drivers.base import bounded

        release = await self.limiter.acquire(address)
        try:
            coro = self._query_outlets(target, family, unit, outlets)
            return await bounded(_bridge(coro), self.timing.timeout, self.clock, what)
        finally:
            release()

    async def _query_outlets(self, target, family, unit, outlets):
        if outlets is None:
            rows = await self.walk(target, family.status_oid + family.index.prefix(unit))
            return {
                family.outlet_of(oid, unit): family.state_of(value)
                for oid, value in rows
                if family.outlet_of(oid, unit) is not None
            }
        wanted = sorted(set(outlets))
        states = {}
        for start in range(0, len(wanted), MAX_VARBINDS):
            await self._get_states(target, family, unit, wanted[start:start + MAX_VARBINDS],
                                   states)
        return states

    async def _get_states(self, target, family, unit, chunk, states):
        """
        Read ``chunk`` (outlet numbers) into ``states``: one GET, or as many
        as the PDU's tooBig answers ask for (see the module doc).
        """
        where = (target.host, target.port)
        size = self._fits.get(where, len(chunk))
        if size < len(chunk):  # this PDU answered tooBig to more before
            for start in range(0, len(chunk), size):
                await self._get_states(target, family, unit, chunk[start:start + size], states)
            return
        oids = [family.status_instance(unit, n) for n in chunk]
        try:
            rows = await self.get(target, oids, "query outlets")
        except PowerTimeout:
            if len(chunk) <= SAFE_VARBINDS or where in self._fits:
                raise
            # Silence to a big GET: an agent may drop a request it cannot
            # hold instead of answering tooBig.  Retried (once, remembered)
            # at the size every PDU takes; a dead PDU times out again.
            self.log.warn("{what}: no answer to a GET of {n} outlets; asking for "
                          "{safe} at a time from now on", what=target.describe(),
                          n=len(chunk), safe=SAFE_VARBINDS)
            self._fits[where] = SAFE_VARBINDS
            await self._get_states(target, family, unit, chunk, states)
            return
        except TooBig:
            if len(chunk) == 1:
                raise ProtocolError(f"{target.describe()} query outlets: tooBig for one "
                                    "outlet") from None
            half = (len(chunk) + 1) // 2
            self._fits[where] = min(half, self._fits.get(where, half))
            await self._get_states(target, family, unit, chunk[:half], states)
            await self._get_states(target, family, unit, chunk[half:], states)
            return
        for n, (_, value) in zip(chunk, rows):
            states[n] = PowerState.UNKNOWN if _is_missing(value) else family.state_of(value)


def _settle_future(engine, handle, indication, status, index, var_binds, future):
    """A command generator's callback: hand the answer to the awaiting coroutine."""
    if not future.done():  # cancelled meanwhile: the answer is dropped
        future.set_result((indication, status, index, var_binds))


async def _settle():
    """Two loop turns, so closed asyncio transports really close their sockets."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def _bridge(coro):
    """
    A Deferred for an asyncio coroutine; cancelling it cancels the task and
    fails with Twisted's CancelledError, as callers of Deferreds expect.
    """

    def translate(failure):
        failure.trap(asyncio.CancelledError)
        raise defer.CancelledError()

    return defer.Deferred.fromFuture(asyncio.ensure_future(coro)).addErrback(translate)


class SnmpOutletDriver(VerifyingDriver):
    """One PDU outlet: GET the status OID, SET the family's command."""

    def __init__(self, driver_type, settings, clock, timing):
        super().__init__(clock, timing)
        self._type = driver_type
        self.family = snmp_families.get(settings["family"])
        self.unit = settings["unit"]
        self.outlet = settings["outlet"]
        self.target = driver_type.shared_target(settings)
        self.capabilities = driver_type.capabilities_for(settings)

    def describe(self):
        return f"{self.target.describe()} {self.family.name} outlet {self.unit}.{self.outlet}"

    def read_state(self):
        return _bridge(self._read_state())

    async def _read_state(self):
        oid = self.family.status_instance(self.unit, self.outlet)
        ((_, value),) = await self._type.get(self.target, [oid], f"outlet {self.outlet} query")
        if _is_missing(value):
            raise ProtocolError(
                f"{self.describe()}: no {self.family.status_object} at "
                f"{'.'.join(map(str, oid))}; wrong family, unit or outlet?"
            )
        return self.family.state_of(value)

    def send(self, command):
        cmd = {
            Command.ON: self.family.on,
            Command.OFF: self.family.off,
            Command.CYCLE: self.family.reboot,
        }.get(command)
        if cmd is None:
            return defer.fail(UnsupportedError(f"{self.describe()} cannot {command.value}"))
        oid = self.family.command_instance(cmd, self.unit, self.outlet)
        return _bridge(self._type.set(self.target, oid, cmd.value, f"outlet {self.outlet} {command.value}"))
