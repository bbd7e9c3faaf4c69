"""The standard catalogue: exactly the real drivers, validating before any I/O."""

from twisted.internet import defer
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from powerctl.drivers.errors import InvalidParameters, UnknownDriver
from powerctl.drivers.interface import IDriverType, IPowerDriver, Timing
from powerctl.drivers.standard import (
    STANDARD_DRIVERS,
    standard_catalogue,
    standard_schemas,
)


class StandardCatalogueTests(unittest.TestCase):
    def setUp(self):
        from twisted.internet import reactor

        self.timing = Timing(timeout=3.0, retries=0)
        self.catalogue = standard_catalogue(reactor, timing=self.timing)
        self.addCleanup(self.catalogue.close)

    def test_names(self):
        self.assertEqual(self.catalogue.names,
                         ["ipmi", "manual", "redfish", "snmp", "webhook"])
        self.assertEqual(sorted(STANDARD_DRIVERS), self.catalogue.names)

    def test_types_provide_the_interface(self):
        for name in self.catalogue.names:
            driver_type = self.catalogue.get(name)
            self.assertTrue(verifyObject(IDriverType, driver_type), name)
            self.assertEqual(driver_type.name, name)

    def test_timing_is_shared(self):
        for name in ("ipmi", "snmp", "redfish", "webhook"):
            self.assertIs(self.catalogue.get(name).timing, self.timing, name)

    def test_default_timing(self):
        from twisted.internet import reactor

        catalogue = standard_catalogue(reactor)
        self.addCleanup(catalogue.close)
        self.assertEqual(catalogue.get("ipmi").timing, Timing())

    def test_unknown_driver(self):
        e = self.assertRaises(UnknownDriver, self.catalogue.get, "amt")
        self.assertIn("ipmi", str(e))
        self.assertRaises(UnknownDriver, self.catalogue.build, "amt", {})

    def test_validates_and_fills_defaults(self):
        settings = self.catalogue.validate(
            "ipmi", {"host": "127.0.0.1", "port": "6230", "password": "pw"})
        self.assertEqual(settings["port"], 6230)
        self.assertEqual(settings["privilege"], "administrator")
        settings = self.catalogue.validate(
            "snmp", {"host": "pdu1", "family": "apc-rpdu", "outlet": "4"})
        self.assertEqual((settings["outlet"], settings["version"]), (4, "2c"))
        settings = self.catalogue.validate(
            "webhook", {"on_url": "http://127.0.0.1/on", "off_url": "http://127.0.0.1/off",
                        "headers": {"X-Token": "t"}})
        self.assertEqual(settings["headers"], {"X-Token": "t"})

    def test_refuses_bad_params(self):
        cases = [
            ("ipmi", {"host": "127.0.0.1"}, "password"),  # missing required
            ("ipmi", {"host": "127.0.0.1", "password": "x", "port": "abc"}, "port"),
            ("ipmi", {"host": "127.0.0.1", "password": "x", "colour": "red"}, "colour"),
            ("snmp", {"host": "pdu1", "family": "nope", "outlet": 1}, "family"),
            ("redfish", {"url": "ftp://bmc"}, "url"),
            ("webhook", {"on_url": "http://a/", "off_url": "http://a/",
                         "headers": {"X": 1}}, "headers"),
            ("manual", {}, "label"),
        ]
        for driver, params, bad in cases:
            e = self.assertRaises(InvalidParameters, self.catalogue.build, driver, params)
            self.assertEqual(e.parameter, bad, (driver, params))

    def test_build_does_no_io(self):
        """Binding opens nothing: no IPMI session, no SNMP engine."""
        driver = self.catalogue.build(
            "ipmi", {"host": "127.0.0.1", "port": 9, "password": "pw"})
        self.assertTrue(verifyObject(IPowerDriver, driver))
        self.assertEqual(self.catalogue.get("ipmi").sessions, 0)
        self.catalogue.build("snmp", {"host": "127.0.0.1", "family": "apc-rpdu", "outlet": 1})
        self.assertIsNone(self.catalogue.get("snmp")._engine)

    def test_schemas_without_instances(self):
        schemas = standard_schemas()
        self.assertEqual(sorted(schemas), self.catalogue.names)
        self.assertIn("password", schemas["ipmi"].secrets)
        self.assertIn("community", schemas["snmp"].secrets)

    @defer.inlineCallbacks
    def test_close_fires(self):
        results = yield self.catalogue.close()
        self.assertEqual([ok for ok, _ in results], [True] * 5)
