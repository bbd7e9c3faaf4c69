"""
The two SNMP messages a poll needs, in BER, without pysnmp: a community
(v1/v2c) ``GetRequest`` out and its ``Response`` in.

Why: in a poll sweep of 10,000 outlets, pysnmp's generic machinery (pyasn1
objects built, cloned and decoded per varbind, the message processing
subsystem) was most of the pserv's CPU, about 7 ms per 50-outlet GET on
this machine.  Encoding a GET of known numeric OIDs and reading back
integers is a few hundred bytes of BER; doing it directly costs a few
per cent of that.  SETs, walks and SNMPv3 (USM keys, privacy) stay with
pysnmp, which the tests also use as the independent peer of this codec.

Pure functions, no I/O.  :func:`decode_response` raises :class:`BerError`
on anything it cannot read; the caller treats such a datagram as never
received (a stray or damaged datagram must not fail a request that a
retransmission may still complete).

Values decode to ``int`` (INTEGER, Counter32, Gauge32, TimeTicks,
Counter64), ``bytes`` (OCTET STRING, IpAddress, Opaque), ``tuple`` (OBJECT
IDENTIFIER), ``None`` (NULL) or one of the exception markers
:data:`NO_SUCH_OBJECT`, :data:`NO_SUCH_INSTANCE`, :data:`END_OF_MIB_VIEW`.
"""

import attrs

#: error-status names by number (RFC 3416 section 3)
ERROR_STATUS = (
    "noError", "tooBig", "noSuchName", "badValue", "readOnly", "genErr", "noAccess",
    "wrongType", "wrongLength", "wrongEncoding", "wrongValue", "noCreation",
    "inconsistentValue", "resourceUnavailable", "commitFailed", "undoFailed",
    "authorizationError", "notWritable", "inconsistentName",
)

_INTEGER, _OCTETS, _NULL, _OID, _SEQUENCE = 0x02, 0x04, 0x05, 0x06, 0x30
_GET, _RESPONSE = 0xA0, 0xA2
_INTEGER_TYPES = {_INTEGER, 0x41, 0x42, 0x43, 0x46}  # Counter32, Gauge32, TimeTicks, Counter64
_OCTET_TYPES = {_OCTETS, 0x40, 0x44}  # IpAddress, Opaque


class BerError(ValueError):
    """A datagram that is not a well-formed SNMP v1/v2c response."""


@attrs.frozen
class _Exception:
    """An SNMPv2 exception value in place of a variable's value."""

    name: str

    def __repr__(self):
        return self.name


NO_SUCH_OBJECT = _Exception("noSuchObject")
NO_SUCH_INSTANCE = _Exception("noSuchInstance")
END_OF_MIB_VIEW = _Exception("endOfMibView")
_EXCEPTIONS = {0x80: NO_SUCH_OBJECT, 0x81: NO_SUCH_INSTANCE, 0x82: END_OF_MIB_VIEW}
MISSING = frozenset(_EXCEPTIONS.values())
MISSING_TYPE = _Exception


@attrs.frozen
class Response:
    """A decoded response: ``var_binds`` is ``((oid tuple, value), ...)``."""

    version: int
    community: bytes
    request_id: int
    error_status: int
    error_index: int
    var_binds: tuple

    @property
    def status_name(self):
        if 0 <= self.error_status < len(ERROR_STATUS):
            return ERROR_STATUS[self.error_status]
        return f"error status {self.error_status}"


# -- encoding ----------------------------------------------------------------


def _length(n):
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def _tlv(tag, body):
    return bytes((tag,)) + _length(len(body)) + body


def _integer(value):
    size = max(1, (value.bit_length() + 8) // 8)  # room for the sign bit
    return _tlv(_INTEGER, value.to_bytes(size, "big", signed=True))


def encode_oid(oid):
    """The BER encoding (tag, length, contents) of an OID given as a tuple of ints."""
    if len(oid) < 2 or oid[0] > 2 or (oid[0] < 2 and oid[1] > 39):
        raise ValueError(f"not an encodable OID: {oid!r}")
    body = bytearray()
    for arc in (oid[0] * 40 + oid[1], *oid[2:]):
        if arc < 0:
            raise ValueError(f"negative OID arc in {oid!r}")
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return _tlv(_OID, bytes(body))


def encode_get(version, community, request_id, encoded_oids):
    """
    A GetRequest message.  ``version``: 0 for v1, 1 for v2c; ``community``:
    bytes; ``encoded_oids``: OIDs already through :func:`encode_oid` (a
    poller encodes each OID once and keeps it).
    """
    null = b"\x05\x00"
    var_binds = b"".join(_tlv(_SEQUENCE, oid + null) for oid in encoded_oids)
    pdu = _tlv(_GET, _integer(request_id) + b"\x02\x01\x00\x02\x01\x00"
               + _tlv(_SEQUENCE, var_binds))
    return _tlv(_SEQUENCE, _integer(version) + _tlv(_OCTETS, community) + pdu)


# -- decoding ----------------------------------------------------------------


def _read(data, at, end):
    """``(tag, start of contents, end of contents)`` of the TLV at ``at``."""
    if at + 2 > end:
        raise BerError("truncated")
    tag, first = data[at], data[at + 1]
    at += 2
    if first & 0x80:
        count = first & 0x7F
        if count == 0 or count > 4 or at + count > end:
            raise BerError("bad length")
        length = int.from_bytes(data[at:at + count], "big")
        at += count
    else:
        length = first
    if at + length > end:
        raise BerError("truncated")
    return tag, at, at + length


def _expect(data, at, end, tag):
    got, start, stop = _read(data, at, end)
    if got != tag:
        raise BerError(f"expected tag {tag:#x}, got {got:#x}")
    return start, stop


def _int(data, start, stop):
    if start == stop:
        raise BerError("empty integer")
    return int.from_bytes(data[start:stop], "big", signed=True)


def _oid(data, start, stop):
    if start == stop:
        raise BerError("empty OID")
    arcs, arc = [], 0
    for byte in data[start:stop]:
        arc = (arc << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(arc)
            arc = 0
    if data[stop - 1] & 0x80:
        raise BerError("unterminated OID arc")
    first = arcs[0]
    head = (0, first) if first < 40 else (1, first - 40) if first < 80 else (2, first - 80)
    return head + tuple(arcs[1:])


def _value(data, tag, start, stop):
    if tag in _INTEGER_TYPES:
        if tag == _INTEGER:
            return _int(data, start, stop)
        return int.from_bytes(data[start:stop], "big")  # unsigned application types
    if tag in _OCTET_TYPES:
        return bytes(data[start:stop])
    if tag == _OID:
        return _oid(data, start, stop)
    if tag == _NULL:
        return None
    if tag in _EXCEPTIONS:
        return _EXCEPTIONS[tag]
    raise BerError(f"unknown value tag {tag:#x}")


def _message(data, pdu_tag):
    """
    ``(version, community, start, end)`` of a message whose PDU has
    ``pdu_tag``: the PDU's contents lie in ``data[start:end]``.
    """
    start, stop = _expect(data, 0, len(data), _SEQUENCE)
    at, version_end = _expect(data, start, stop, _INTEGER)
    version = _int(data, at, version_end)
    at, community_end = _expect(data, version_end, stop, _OCTETS)
    community = bytes(data[at:community_end])
    at, pdu_end = _expect(data, community_end, stop, pdu_tag)
    return version, community, at, pdu_end


def decode_response(data):
    """A :class:`Response` from one datagram; :class:`BerError` if it is none."""
    version, community, at, pdu_end = _message(data, _RESPONSE)
    fields = []
    for _ in range(3):
        start, at = _expect(data, at, pdu_end, _INTEGER)
        fields.append(_int(data, start, at))
    at, list_end = _expect(data, at, pdu_end, _SEQUENCE)
    var_binds = []
    while at < list_end:
        start, at = _expect(data, at, list_end, _SEQUENCE)
        name_start, name_end = _expect(data, start, at, _OID)
        tag, value_start, value_end = _read(data, name_end, at)
        var_binds.append((_oid(data, name_start, name_end),
                          _value(data, tag, value_start, value_end)))
    return Response(version, community, fields[0], fields[1], fields[2], tuple(var_binds))



# -- the agent's side (light simulators, tests) ---------------------------


def decode_get(data):
    """
    ``(version, community, request_id, [oid, ...])`` of a GetRequest;
    :class:`BerError` if ``data`` is not one.  For light simulators (the
    bench's PDUs) and tests; the driver never needs it.
    """
    version, community, at, pdu_end = _message(data, _GET)
    start, at = _expect(data, at, pdu_end, _INTEGER)
    request_id = _int(data, start, at)
    for _ in range(2):
        _, at = _expect(data, at, pdu_end, _INTEGER)
    at, list_end = _expect(data, at, pdu_end, _SEQUENCE)
    oids = []
    while at < list_end:
        start, at = _expect(data, at, list_end, _SEQUENCE)
        name_start, name_end = _expect(data, start, at, _OID)
        oids.append(_oid(data, name_start, name_end))
    return version, community, request_id, oids


def encode_response(version, community, request_id, var_binds, error_status=0, error_index=0):
    """
    A Response message; ``var_binds``: ``[(encoded OID, value)]`` with
    ``value`` an int (INTEGER) or one of the exception markers.
    """
    codes = {marker: tag for tag, marker in _EXCEPTIONS.items()}
    body = bytearray()
    for oid, value in var_binds:
        encoded = _tlv(codes[value], b"") if isinstance(value, _Exception) else _integer(value)
        body += _tlv(_SEQUENCE, oid + encoded)
    pdu = _tlv(_RESPONSE, _integer(request_id) + _integer(error_status) + _integer(error_index)
               + _tlv(_SEQUENCE, bytes(body)))
    return _tlv(_SEQUENCE, _integer(version) + _tlv(_OCTETS, community) + pdu)
