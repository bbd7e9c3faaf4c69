"""
The PDU family table: complete, self-consistent, and faithful to the MIBs
on the points that are easy to get wrong.
"""

from twisted.trial import unittest

from powerctl.drivers import snmp_families
from powerctl.drivers.snmp_families import FAMILIES, IndexScheme
from powerctl.power import PowerState

ENTERPRISES = (1, 3, 6, 1, 4, 1)
REQUIRED = {
    "apc-rpdu", "apc-masterswitch", "raritan-px2", "eaton-epdu", "servertech-sentry3",
    "servertech-sentry4", "cyberpower", "baytech-mrp", "vertiv-geist",
}


class TableTests(unittest.TestCase):
    def test_required_families_present(self):
        self.assertTrue(REQUIRED <= set(snmp_families.NAMES))

    def test_names_unique(self):
        self.assertEqual(len(snmp_families.NAMES), len(set(snmp_families.NAMES)))

    def test_oids_are_vendor_oids(self):
        for f in FAMILIES:
            for oid in [f.status_oid, f.on.oid, f.off.oid] + ([f.reboot.oid] if f.reboot else []):
                self.assertEqual(oid[:6], ENTERPRISES, f.name)

    def test_on_and_off_differ(self):
        for f in FAMILIES:
            self.assertNotEqual((f.on.oid, f.on.value), (f.off.oid, f.off.value), f.name)
            self.assertEqual(f.state_of(f.raw_of(PowerState.ON)), PowerState.ON)
            self.assertEqual(f.state_of(f.raw_of(PowerState.OFF)), PowerState.OFF)

    def test_unknown_raw_values_are_unknown(self):
        self.assertEqual(snmp_families.get("eaton-epdu").state_of(2), PowerState.UNKNOWN)  # pendingOff
        self.assertEqual(snmp_families.get("servertech-sentry4").state_of(0), PowerState.UNKNOWN)

    def test_unknown_family(self):
        with self.assertRaises(KeyError) as cm:
            snmp_families.get("nope")
        self.assertIn("apc-rpdu", str(cm.exception))


class MibFactsTests(unittest.TestCase):
    """Facts checked against the MIB files, where copied tables go wrong."""

    def test_eaton_off_is_column_3_on_is_column_4(self):
        f = snmp_families.get("eaton-epdu")
        base = (1, 3, 6, 1, 4, 1, 534, 6, 6, 7, 6, 6, 1)
        self.assertEqual(f.off.oid, base + (3,))  # outletControlOffCmd
        self.assertEqual(f.on.oid, base + (4,))  # outletControlOnCmd
        self.assertEqual(f.status_oid, base + (2,))  # outletControlStatus
        self.assertEqual((f.on.value, f.off.value), (0, 0))  # 0 = no delay

    def test_raritan_state_enumeration_differs_from_operation(self):
        f = snmp_families.get("raritan-px2")
        self.assertEqual(dict(f.status_values), {7: PowerState.ON, 8: PowerState.OFF})
        self.assertEqual((f.on.value, f.off.value, f.reboot.value), (1, 0, 2))

    def test_apc_rpdu(self):
        f = snmp_families.get("apc-rpdu")
        self.assertEqual(f.status_instance(1, 5), (1, 3, 6, 1, 4, 1, 318, 1, 1, 12, 3, 5, 1, 1, 4, 5))
        self.assertEqual(
            f.command_instance(f.off, 1, 5), (1, 3, 6, 1, 4, 1, 318, 1, 1, 12, 3, 3, 1, 1, 4, 5)
        )

    def test_baytech_has_no_reboot(self):
        self.assertIsNone(snmp_families.get("baytech-mrp").reboot)


class IndexTests(unittest.TestCase):
    def test_plain_outlet_refuses_other_units(self):
        self.assertEqual(IndexScheme().index(1, 7), (7,))
        self.assertRaises(ValueError, IndexScheme().index, 2, 7)

    def test_eaton_unit_is_strapping_index_minus_one(self):
        f = snmp_families.get("eaton-epdu")
        self.assertEqual(f.status_instance(1, 3)[-2:], (0, 3))
        self.assertEqual(f.status_instance(2, 3)[-2:], (1, 3))

    def test_sentry_middle_part(self):
        f = snmp_families.get("servertech-sentry4")
        self.assertEqual(f.status_instance(2, 9)[-3:], (2, 1, 9))

    def test_outlet_of_round_trips(self):
        for f in FAMILIES:
            unit = 1
            oid = f.status_instance(unit, 12)
            self.assertEqual(f.outlet_of(oid, unit), 12, f.name)
            self.assertIsNone(f.outlet_of(oid + (1,), unit))
