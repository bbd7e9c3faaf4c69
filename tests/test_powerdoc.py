"""
The shared power-document model: one set of rules for the region and the
pserv (the ``label`` of an agent used to be refused by one and read by the
other), and the one ``redact``.
"""

from twisted.trial import unittest

from powerctl.drivers.catalogue import DriverCatalogue
from powerctl.drivers.schema import Param, Schema
from powerctl.powerdoc import InvalidPowerDocument, PowerDoc, redact
from powerctl.pserv.executor import DriverExecutor
from powerctl.region import powerconfig
from powerctl.region.errors import InvalidInput, PowerDocumentRefused
from tests.test_powerconfig import FakeDriverType


class BindingType(FakeDriverType):
    """A driver type the executor can bind (a fake driver per agent)."""

    def bind(self, settings):
        from tests.test_multiagent import FakeDriver

        return FakeDriver()


def catalogue():
    return DriverCatalogue([BindingType("fake", Schema("fake", (
        Param("host", "host", required=True),
        Param("password", "str", secret=True),
    )))])


def agent(host, **extra):
    return dict({"driver": "fake", "params": {"host": host}}, **extra)


class BothSidesTests(unittest.TestCase):
    """What the region accepts the pserv accepts, and what one refuses the other refuses."""

    def region(self, power):
        return powerconfig.resolve_power(power, catalogue())

    def pserv(self, power):
        executor = DriverExecutor(catalogue())
        executor.configure("n1", power)
        return executor

    def test_a_label_is_accepted_by_both_and_names_the_agent(self):
        power = {"mode": "concurrent",
                 "agents": [agent("10.0.0.1", label="psu-a"), agent("10.0.0.2")]}
        resolved = self.region(power)
        self.assertEqual([a.get("label") for a in resolved["agents"]], ["psu-a", None])
        stored = powerconfig.validate_power(power, catalogue())
        self.assertEqual(stored["agents"][0]["label"], "psu-a")
        executor = self.pserv(resolved)
        self.assertEqual([a.label for a in executor._nodes["n1"].power.agents],
                         ["psu-a", "1:fake"])

    def test_bad_documents_are_refused_by_both_with_the_same_words(self):
        for power, words in [
            ({"agents": [agent("h", label="")]}, "power.agents[0]: label ''"),
            ({"agents": [agent("h", label="a b")]}, "power.agents[0]: label 'a b'"),
            ({"agents": [agent("h", label=7)]}, "power.agents[0]: label 7"),
            ({"mode": "concurrent", "agents": [agent("h", label="x"), agent("i", label="x")]},
             "power.agents[1]: label 'x' names another agent"),
            # a label may not take another agent's default name either
            ({"mode": "concurrent", "agents": [agent("h"), agent("i", label="0:fake")]},
             "power.agents[1]: label '0:fake' names another agent"),
            ({"agents": [agent("h", colour="red")]}, "power.agents[0]: unknown key 'colour'"),
            ({"agents": [agent("h", pod_manager="rack-7")]}, "is not a uuid"),
            ({"agents": [agent("h"), agent("i")]}, "mode single takes exactly 1 agent"),
            ({"mode": "sequential", "agents": [agent("h")]}, "takes 2 to 8 agents"),
            ({"agents": [{"params": {}}]}, "power.agents[0]: 'driver' is required"),
            ({"agents": [agent("h")], "extra": 1}, "power: unknown key 'extra'"),
        ]:
            refused = self.assertRaises(PowerDocumentRefused, self.region, power)
            self.assertIn(words, str(refused))
            self.assertIsInstance(refused, InvalidInput)
            self.assertIsInstance(refused, InvalidPowerDocument)
            unusable = self.assertRaises(InvalidPowerDocument, self.pserv, power)
            self.assertEqual(str(unusable), str(refused))

    def test_the_model_knows_where_the_fault_is(self):
        e = self.assertRaises(InvalidPowerDocument, PowerDoc.parse,
                              {"agents": [agent("h", label="a b")]})
        self.assertEqual((e.agent, e.parameter), (0, "label"))
        refused = PowerDocumentRefused.of(e)
        self.assertEqual((refused.agent, refused.parameter, refused.code),
                         (0, "label", "invalid_power"))
        self.assertEqual(str(refused), str(e))

    def test_round_trip(self):
        power = {"mode": "concurrent", "agents": [
            agent("h", label="a"),
            {"driver": "fake", "pod_manager": "7B0C53C6-3BD1-4C57-9C4A-0D7E3C2F3A10",
             "params": {}}]}
        doc = PowerDoc.parse(power)
        self.assertEqual(doc.pod_managers, ["7b0c53c6-3bd1-4c57-9c4a-0d7e3c2f3a10"])
        self.assertEqual(PowerDoc.parse(doc.to_json()), doc)


class RedactTests(unittest.TestCase):
    SECRETS = {"fake": frozenset({"password"})}

    def test_declared_secrets_of_a_known_driver_and_nothing_else(self):
        power = {"agents": [{"driver": "fake",
                             "params": {"host": "h", "password": "pw", "api_key": "k"}}]}
        shown = redact(power, self.SECRETS)
        self.assertEqual(shown["agents"][0]["params"],
                         {"host": "h", "password": "(set)", "api_key": "k"})
        self.assertEqual(power["agents"][0]["params"]["password"], "pw")

    def test_an_unknown_driver_hides_what_looks_secret(self):
        power = {"agents": [{"driver": "gone", "params": {
            "api_key": "k", "Community": "c", "token": "t", "host": "h", "password": ""}}]}
        shown = redact(power, self.SECRETS)
        self.assertEqual(shown["agents"][0]["params"], {
            "api_key": "(set)", "Community": "(set)", "token": "(set)", "host": "h",
            "password": ""})

    def test_documents_outside_the_model_pass_through(self):
        for power in (None, "x", {"agents": "x"}, {"agents": ["x", {"params": 3}]}):
            self.assertEqual(redact(power, self.SECRETS), power)

    def test_nothing_shown_shares_a_mutable_part(self):
        power = {"agents": [{"driver": "fake", "params": {"host": "h", "headers": {"a": "b"}}}]}
        shown = redact(power, self.SECRETS)
        shown["agents"][0]["params"]["headers"]["a"] = "changed"
        self.assertEqual(power["agents"][0]["params"]["headers"], {"a": "b"})

    def test_the_region_redacts_with_its_catalogue(self):
        shown = redact({"agents": [{"driver": "fake", "params": {"host": "h", "password": "pw"}}]},
                       powerconfig.secret_names(catalogue()))
        self.assertEqual(shown["agents"][0]["params"]["password"], "(set)")
