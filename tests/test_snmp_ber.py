"""
The SNMP GET codec (``powerctl.drivers.snmp_ber``) against pysnmp's own
message classes and pyasn1's BER codec: what we encode, pysnmp decodes to
the same request; what pysnmp encodes as an answer, we decode to the same
values; damaged datagrams are refused with BerError and nothing else.
(End to end against the pysnmp agent: tests/test_snmp_driver.py.)
"""

import random

from pyasn1.codec.ber import decoder, encoder
from pysnmp.proto.api import v1, v2c
from twisted.trial import unittest

from powerctl.drivers import snmp_ber

APC = (1, 3, 6, 1, 4, 1, 318, 1, 1, 12, 3, 5, 1, 1, 4)


def pysnmp_response(api, request_id, var_binds, status=0, index=0, community="public"):
    """An answer as pysnmp (the agent side) encodes it."""
    pdu = api.GetResponsePDU()
    api.apiPDU.set_defaults(pdu)
    api.apiPDU.set_request_id(pdu, request_id)
    api.apiPDU.set_error_status(pdu, status)
    api.apiPDU.set_error_index(pdu, index)
    api.apiPDU.set_varbinds(pdu, var_binds)
    msg = api.Message()
    api.apiMessage.set_defaults(msg)
    api.apiMessage.set_community(msg, community)
    api.apiMessage.set_pdu(msg, pdu)
    return encoder.encode(msg)


class EncodeTests(unittest.TestCase):
    def decoded(self, api, data):
        msg, rest = decoder.decode(data, asn1Spec=api.Message())
        self.assertEqual(rest, b"")
        pdu = api.apiMessage.get_pdu(msg)
        return (int(msg["version"]), bytes(api.apiMessage.get_community(msg)),
                int(api.apiPDU.get_request_id(pdu)),
                [(tuple(name), value) for name, value in api.apiPDU.get_varbinds(pdu)])

    def test_a_get_of_many_outlets_reads_back_in_pysnmp(self):
        oids = [APC + (n,) for n in range(1, 61)]  # long-form lengths throughout
        data = snmp_ber.encode_get(1, b"public", 0x7FFFFFFF,
                                   [snmp_ber.encode_oid(o) for o in oids])
        version, community, request_id, var_binds = self.decoded(v2c, data)
        self.assertEqual((version, community, request_id), (1, b"public", 0x7FFFFFFF))
        self.assertEqual([name for name, _ in var_binds], oids)
        self.assertTrue(all(v.isSameTypeWith(v2c.null) for _, v in var_binds))

    def test_v1_and_small_request_ids(self):
        for request_id in (1, 127, 128, 255, 256, 65535):
            data = snmp_ber.encode_get(0, b"c", request_id, [snmp_ber.encode_oid(APC + (1,))])
            self.assertEqual(self.decoded(v1, data)[:3], (0, b"c", request_id))

    def test_oid_arcs_of_every_size(self):
        for oid in [(1, 3), (0, 39), (2, 999, 3), (1, 3, 127, 128, 16383, 16384, 2**32 - 1)]:
            data = snmp_ber.encode_get(1, b"public", 5, [snmp_ber.encode_oid(oid)])
            self.assertEqual(self.decoded(v2c, data)[3][0][0], oid)

    def test_unencodable_oids_are_refused(self):
        for oid in [(1,), (3, 1), (1, 40), (1, 3, -1)]:
            self.assertRaises(ValueError, snmp_ber.encode_oid, oid)


class DecodeTests(unittest.TestCase):
    def test_values_of_every_kind_pysnmp_sends(self):
        values = [v2c.Integer(0), v2c.Integer(-1), v2c.Integer(2**31 - 1),
                  v2c.Integer(-(2**31)), v2c.Counter32(2**32 - 1), v2c.Gauge32(200),
                  v2c.TimeTicks(12345), v2c.Counter64(2**64 - 1), v2c.OctetString(b"x" * 300),
                  v2c.IpAddress("10.0.0.1"), v2c.ObjectIdentifier((1, 3, 6, 1, 200)),
                  v2c.null, v2c.NoSuchObject(""), v2c.NoSuchInstance(""),
                  v2c.EndOfMibView("")]
        oids = [APC + (n,) for n in range(1, len(values) + 1)]
        data = pysnmp_response(v2c, 77, list(zip(oids, values)))
        got = snmp_ber.decode_response(data)
        self.assertEqual((got.version, got.community, got.request_id, got.error_status,
                          got.error_index), (1, b"public", 77, 0, 0))
        self.assertEqual([name for name, _ in got.var_binds], oids)
        self.assertEqual([value for _, value in got.var_binds], [
            0, -1, 2**31 - 1, -(2**31), 2**32 - 1, 200, 12345, 2**64 - 1, b"x" * 300,
            bytes([10, 0, 0, 1]), (1, 3, 6, 1, 200), None, snmp_ber.NO_SUCH_OBJECT,
            snmp_ber.NO_SUCH_INSTANCE, snmp_ber.END_OF_MIB_VIEW])

    def test_error_status_and_index(self):
        data = pysnmp_response(v1, 9, [(APC + (1,), v1.Integer(1))], status=2, index=1)
        got = snmp_ber.decode_response(data)
        self.assertEqual((got.version, got.error_status, got.error_index, got.status_name),
                         (0, 2, 1, "noSuchName"))
        too_big = snmp_ber.decode_response(pysnmp_response(v2c, 9, [], status=1))
        self.assertEqual((too_big.status_name, too_big.var_binds), ("tooBig", ()))

    def test_a_request_is_not_an_answer(self):
        data = snmp_ber.encode_get(1, b"public", 5, [snmp_ber.encode_oid(APC)])
        self.assertRaises(snmp_ber.BerError, snmp_ber.decode_response, data)

    def test_damaged_datagrams_raise_ber_error_only(self):
        seed = random.randrange(2**32)
        rng = random.Random(seed)
        good = pysnmp_response(v2c, 1234, [(APC + (n,), v2c.Integer(n)) for n in range(1, 9)])
        for _ in range(2000):
            data = bytearray(good)
            kind = rng.randrange(3)
            if kind == 0:
                data = data[:rng.randrange(len(data))]
            elif kind == 1:
                for _ in range(rng.randrange(1, 4)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
            else:
                data = bytearray(rng.randrange(256) for _ in range(rng.randrange(64)))
            try:
                snmp_ber.decode_response(bytes(data))
            except snmp_ber.BerError:
                pass
            except Exception as e:  # pragma: no cover - the failure report
                self.fail(f"seed {seed}: {type(e).__name__} {e} on {bytes(data).hex()}")


class AgentSideTests(unittest.TestCase):
    """The light simulators' half (bench/simhost.py), against pysnmp likewise."""

    def test_a_pysnmp_get_decodes(self):
        pdu = v2c.GetRequestPDU()
        v2c.apiPDU.set_defaults(pdu)
        v2c.apiPDU.set_request_id(pdu, 4242)
        v2c.apiPDU.set_varbinds(pdu, [(APC + (n,), v2c.null) for n in range(1, 51)])
        msg = v2c.Message()
        v2c.apiMessage.set_defaults(msg)
        v2c.apiMessage.set_community(msg, "public")
        v2c.apiMessage.set_pdu(msg, pdu)
        self.assertEqual(snmp_ber.decode_get(encoder.encode(msg)),
                         (1, b"public", 4242, [APC + (n,) for n in range(1, 51)]))

    def test_a_response_reads_back_in_pysnmp_and_here(self):
        var_binds = [(snmp_ber.encode_oid(APC + (1,)), 1), (snmp_ber.encode_oid(APC + (2,)), -5),
                     (snmp_ber.encode_oid(APC + (3,)), snmp_ber.NO_SUCH_INSTANCE)]
        data = snmp_ber.encode_response(1, b"public", 99, var_binds)
        msg, _ = decoder.decode(data, asn1Spec=v2c.Message())
        pdu = v2c.apiMessage.get_pdu(msg)
        self.assertEqual(int(v2c.apiPDU.get_request_id(pdu)), 99)
        values = [value for _, value in v2c.apiPDU.get_varbinds(pdu)]
        self.assertEqual([int(v) for v in values[:2]], [1, -5])
        self.assertTrue(values[2].isSameTypeWith(v2c.NoSuchInstance()))
        got = snmp_ber.decode_response(data)
        self.assertEqual([v for _, v in got.var_binds], [1, -5, snmp_ber.NO_SUCH_INSTANCE])
        too_big = snmp_ber.decode_response(snmp_ber.encode_response(0, b"c", 1, [], 1, 0))
        self.assertEqual((too_big.version, too_big.status_name), (0, "tooBig"))
