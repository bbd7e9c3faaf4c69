"""
Inrush budgets per electrical circuit, kept by the pserv that owns the
circuit's nodes.

Every node of a circuit has the same owning pserv (the region places nodes
by circuit: :func:`powerctl.ownership.placement_key`), so that pserv sees
every power-on of the circuit and keeps its budget alone: at most
``max_on`` power-ons in flight at once, starts at least ``spacing``
seconds apart (:class:`~powerctl.drivers.bmclimit.Pacer`).  The region
sends the circuit and its budget with each node's configuration (``Recover``
and every power command); a changed budget applies to the next power-on.

A driver takes the budget only when it really sends ``on`` -- a node a
query shows on already spends nothing -- and holds it until the state is
verified (:class:`~powerctl.drivers.base.VerifyingDriver`).

Pure logic on a clock, no I/O.
"""

import attrs

from powerctl.drivers.bmclimit import Pacer


@attrs.frozen
class Circuit:
    """A node's circuit as the region sends it; ``max_on`` None: no budget."""

    name: str
    max_on: int | None = None
    spacing: float = 0.0

    @classmethod
    def parse(cls, value):
        """A :class:`Circuit` from the region's ``{"name", "max_on", "spacing"}``, or None."""
        if not value:
            return None
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            raise ValueError(f"circuit: expected {{'name', 'max_on', 'spacing'}}, not {value!r}")
        max_on = value.get("max_on")
        if max_on is not None and (isinstance(max_on, bool) or not isinstance(max_on, int)
                                   or max_on < 1):
            raise ValueError(f"circuit {value['name']}: max_on must be an integer >= 1")
        spacing = value.get("spacing") or 0.0
        if isinstance(spacing, bool) or not isinstance(spacing, (int, float)) or spacing < 0:
            raise ValueError(f"circuit {value['name']}: spacing must be >= 0 seconds")
        return cls(value["name"], max_on, float(spacing))


class CircuitBudgets:
    """One :class:`Pacer` per circuit name, reconfigured as budgets arrive."""

    def __init__(self, clock):
        self.clock = clock
        self._pacers = {}

    def learn(self, circuit):
        """Take ``circuit``'s budget (a :class:`Circuit`) as the current one."""
        pacer = self._pacers.get(circuit.name)
        if pacer is None:
            self._pacers[circuit.name] = Pacer(self.clock, circuit.max_on, circuit.spacing)
        elif (pacer.max_at_once, pacer.spacing) != (circuit.max_on, circuit.spacing):
            pacer.reconfigure(circuit.max_on, circuit.spacing)

    def gate(self, name):
        """What a driver holds: ``gate.acquire()`` -> release, for circuit ``name``."""
        return _Gate(self, name)

    def acquire(self, name):
        pacer = self._pacers.get(name)
        if pacer is None:  # not learnt (cannot happen through learn()): no budget
            pacer = self._pacers[name] = Pacer(self.clock)
        return pacer.acquire()

    def pacer(self, name):
        return self._pacers.get(name)

    def forget_unused(self, names):
        """Drop idle budgets of circuits no known node names any more."""
        for name in [n for n, p in self._pacers.items() if n not in names and p.idle()]:
            del self._pacers[name]


@attrs.frozen
class _Gate:
    budgets: CircuitBudgets
    name: str

    def acquire(self):
        return self.budgets.acquire(self.name)
