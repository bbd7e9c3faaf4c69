"""
Circuits without sockets: placement by circuit, the pserv's budgets per
circuit, and a driver that takes the budget only for a power-on it really
sends, held until the state is verified (Clock, scripted devices).
"""

from twisted.internet import defer, task
from twisted.trial import unittest

from powerctl import ownership
from powerctl.drivers.base import Command
from powerctl.drivers.catalogue import DriverCatalogue
from powerctl.power import PowerState
from powerctl.powerdoc import InvalidPowerDocument
from powerctl.pserv.circuits import Circuit, CircuitBudgets
from powerctl.pserv.executor import DriverExecutor
from tests.test_base_driver import ScriptedDriver

ON, OFF = PowerState.ON, PowerState.OFF


class PlacementTests(unittest.TestCase):
    def test_a_circuit_goes_to_one_pserv(self):
        live = {1: "pserv-a", 2: "pserv-b", 3: "pserv-c"}
        nodes = [(f"n{i}", None, ownership.placement_key(f"n{i}", "rack1-A"))
                 for i in range(48)]
        epochs = {d.epoch for d in ownership.assign(nodes, live)}
        self.assertEqual(len(epochs), 1)

    def test_nodes_without_a_circuit_are_placed_by_name_as_before(self):
        live = {1: "pserv-a", 2: "pserv-b", 3: "pserv-c"}
        plain = [(f"n{i}", None) for i in range(60)]
        keyed = [(f"n{i}", None, ownership.placement_key(f"n{i}", None)) for i in range(60)]
        self.assertEqual(ownership.assign(plain, live), ownership.assign(keyed, live))
        self.assertEqual(len({d.epoch for d in ownership.assign(plain, live)}), 3)

    def test_a_circuit_key_is_never_a_node_name(self):
        self.assertNotEqual(ownership.placement_key("x", "c"), "c")
        self.assertIn("\x1f", ownership.placement_key("x", "c"))


class CircuitParseTests(unittest.TestCase):
    def test_parse(self):
        self.assertIsNone(Circuit.parse(None))
        self.assertEqual(Circuit.parse({"name": "A", "max_on": 4, "spacing": 2}),
                         Circuit("A", 4, 2.0))
        self.assertEqual(Circuit.parse({"name": "A", "max_on": None, "spacing": 0}),
                         Circuit("A", None, 0.0))
        for bad in ({"name": "A", "max_on": 0}, {"name": "A", "max_on": True},
                    {"name": "A", "spacing": -1}, {"max_on": 3}, "A"):
            self.assertRaises(ValueError, Circuit.parse, bad)


class GatedDriverTests(unittest.TestCase):
    """VerifyingDriver with a circuit budget of 1."""

    def setUp(self):
        self.clock = task.Clock()
        self.budgets = CircuitBudgets(self.clock)
        self.budgets.learn(Circuit("A", 1, 2.0))

    def driver(self, state=OFF, delay=1.0):
        d = ScriptedDriver(self.clock, state=state, delay=delay)
        d.circuit = self.budgets.gate("A")
        return d

    def test_a_host_already_on_spends_nothing(self):
        busy = self.driver()
        d1 = busy.on()  # holds the only slot until verified
        self.assertEqual(self.budgets.pacer("A").in_use, 1)
        on_already = self.driver(state=ON)
        self.assertEqual(self.successResultOf(on_already.on()), ON)
        self.assertEqual(on_already.sent, [])
        self.clock.pump([0.25] * 8)
        self.assertEqual(self.successResultOf(d1), ON)
        self.assertEqual(self.budgets.pacer("A").in_use, 0)

    def test_the_budget_is_held_until_verified_and_starts_are_spaced(self):
        a, b = self.driver(delay=3.0), self.driver(delay=0.5)
        da, db = a.on(), b.on()
        self.assertEqual((a.sent, b.sent), ([Command.ON], []))
        self.clock.pump([0.25] * 11)  # 2.75 s: a is still switching
        self.assertEqual(b.sent, [])
        self.clock.pump([0.25] * 2)   # a verified at 3.0 s; b starts (spacing was 2 s)
        self.assertEqual(self.successResultOf(da), ON)
        self.assertEqual(b.sent, [Command.ON])
        self.clock.pump([0.25] * 4)
        self.assertEqual(self.successResultOf(db), ON)

    def test_off_and_the_off_half_of_a_cycle_are_free(self):
        holder = self.driver()
        holder.on()
        other = self.driver(state=ON)
        d = other.off()
        self.clock.pump([0.25] * 6)
        self.assertEqual(self.successResultOf(d), OFF)
        c = self.driver(state=ON).cycle()
        self.clock.pump([0.25] * 6)  # its off is done, its on waits for the slot
        self.assertNoResult(c)
        self.clock.pump([0.25] * 20)
        self.assertEqual(self.successResultOf(c), ON)

    def test_a_cancelled_power_on_gives_the_budget_back(self):
        a, b = self.driver(delay=10.0), self.driver(delay=0.5)
        da, db = a.on(), b.on()
        da.cancel()
        self.failureResultOf(da, defer.CancelledError)
        self.clock.pump([0.25] * 8)  # the 2 s spacing, then b's on
        self.assertEqual(b.sent, [Command.ON])
        self.clock.pump([0.25] * 4)
        self.assertEqual(self.successResultOf(db), ON)
        self.assertEqual(self.budgets.pacer("A").in_use, 0)


class _Type:
    """A driver type building ScriptedDrivers (kept, so a test can look at them)."""

    name = "scripted"

    class schema:
        secrets = frozenset()

        @staticmethod
        def validate(params):
            return dict(params)

    def __init__(self, clock):
        self.clock = clock
        self.built = []

    def bind(self, settings):
        d = ScriptedDriver(self.clock, state=ON if settings.get("on") else OFF, delay=0.5)
        self.built.append(d)
        return d


POWER = {"mode": "single", "agents": [{"driver": "scripted", "params": {}}]}


class ExecutorTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.type = _Type(self.clock)
        self.budgets = CircuitBudgets(self.clock)
        self.executor = DriverExecutor(DriverCatalogue([self.type]), circuits=self.budgets)

    def test_configure_gives_the_drivers_the_circuit_and_learns_the_budget(self):
        self.executor.configure("n1", POWER, circuit={"name": "A", "max_on": 4, "spacing": 2})
        self.assertEqual(self.executor.circuit("n1"), Circuit("A", 4, 2.0))
        self.assertEqual(self.type.built[-1].circuit.name, "A")
        self.assertEqual(self.budgets.pacer("A").max_at_once, 4)

    def test_a_new_budget_applies_without_rebuilding_the_drivers(self):
        self.executor.configure("n1", POWER, circuit={"name": "A", "max_on": 4, "spacing": 2})
        self.executor.configure("n1", POWER, circuit={"name": "A", "max_on": 2, "spacing": 0.5})
        self.assertEqual(len(self.type.built), 1)
        pacer = self.budgets.pacer("A")
        self.assertEqual((pacer.max_at_once, pacer.spacing), (2, 0.5))
        self.assertEqual(self.executor.circuit("n1"), Circuit("A", 2, 0.5))

    def test_another_circuit_rebuilds_and_none_clears(self):
        self.executor.configure("n1", POWER, circuit={"name": "A", "max_on": 4})
        self.executor.configure("n1", POWER, circuit={"name": "B", "max_on": 1})
        self.assertEqual(self.type.built[-1].circuit.name, "B")
        self.executor.configure("n1", POWER)
        self.assertIsNone(self.type.built[-1].circuit)
        self.assertEqual(len(self.type.built), 3)

    def test_a_bad_circuit_is_an_invalid_configuration(self):
        self.assertRaises(InvalidPowerDocument, self.executor.configure, "n1", POWER,
                          circuit={"name": "A", "max_on": -1})
        self.assertEqual(self.executor.known_nodes(), [])

    def test_forgetting_the_last_node_drops_an_idle_budget(self):
        self.executor.configure("n1", POWER, circuit={"name": "A", "max_on": 4})
        self.executor.forget("n1")
        self.assertIsNone(self.budgets.pacer("A"))

    def test_without_budgets_circuits_are_ignored(self):
        executor = DriverExecutor(DriverCatalogue([self.type]))
        executor.configure("n1", POWER, circuit={"name": "A", "max_on": 4})
        self.assertIsNone(self.type.built[-1].circuit)
