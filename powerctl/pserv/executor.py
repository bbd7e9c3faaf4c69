"""
The pserv's executor: turns a registry action into driver calls.

It keeps, per node, the :class:`~powerctl.drivers.topology.NodeTopology`
(levels of agents) built from the power configuration the region sent
last.  Configurations are validated when they arrive (so a bad one is
refused at dispatch, and nothing is sent to any device), and rebuilt only
when they change.
"""

import hashlib
import json
import sys

import attrs
from twisted.internet import defer, task
from zope.interface import implementer

from powerctl.drivers.errors import DriverSettingsError
from powerctl.drivers.topology import Agent, Level, NodeTopology
from powerctl.power import Action
from powerctl.powerdoc import InvalidPowerDocument, PowerDoc
from powerctl.pserv.circuits import Circuit
from powerctl.pserv.lockout import agent_key, guarded
from powerctl.pserv.slots import priority_of
from powerctl.registry import IActionExecutor


def build_node_power(catalogue, power, lockout=None, circuit=None):
    """
    A :class:`NodeTopology` from a (resolved) power document, under the same
    rules as the region's (:class:`~powerctl.powerdoc.PowerDoc`), each
    agent's parameters checked by its driver's schema;
    :class:`InvalidPowerDocument` if unusable.  With ``lockout`` (a
    :class:`powerctl.pserv.lockout.LockoutGuard`) every agent's driver stops
    trying credentials its device keeps refusing.  With ``circuit`` (a
    gate of :class:`powerctl.pserv.circuits.CircuitBudgets`) every agent's
    power-on takes the node's circuit budget.
    """
    doc = PowerDoc.parse(power)
    levels, index = [], 0
    for level in doc.levels:
        agents = []
        for agent in level.agents:
            try:
                driver = catalogue.build(agent.driver, agent.params)
            except DriverSettingsError as e:
                raise InvalidPowerDocument(str(e), index, getattr(e, "parameter", None),
                                           doc.where(index)) from None
            if circuit is not None and hasattr(driver, "circuit"):  # before any wrapper
                driver.circuit = circuit
            if lockout is not None:  # no BMC lock-outs
                driver = guarded(driver, lockout, catalogue,
                                 {"driver": agent.driver, "params": agent.params})
            # one label string for every node's "0:ipmi" (issue 14: memory)
            agents.append(Agent(sys.intern(agent.name(index)), driver))
            index += 1
        levels.append(Level(agents, level.trusted_unverified))
    return NodeTopology(levels)


@attrs.frozen
class KnownNode:
    """
    What the executor keeps for one node, built from its power document.

    The document is kept as its canonical JSON text only, not as the
    decoded dict: at 10,000 nodes the dicts alone were about 10 MB of a
    pserv's resident memory (issue 14), and the text is what an unchanged
    document is recognised by and what its digest is taken of anyway.
    """

    #: the document as canonical JSON (sorted keys): an unchanged document
    #: keeps the drivers; decoded again by :meth:`DriverExecutor.config`
    key: str
    #: the :class:`NodeTopology` driving it
    power: NodeTopology
    #: the :class:`~powerctl.pserv.circuits.Circuit` it is on, or None
    circuit: object = None

    @property
    def circuit_name(self):
        return self.circuit.name if self.circuit is not None else None


class Stagger:
    """
    Spaces power-ons ``delay`` seconds apart, to limit inrush current when
    many nodes come on at once.  Each caller gets the next free slot; the
    wait is a cancellable Deferred, so a superseded power-on leaves no timer.
    """

    def __init__(self, clock, delay):
        self.clock = clock
        self.delay = delay
        # (max(now, -1.0) is now on any clock at or after its epoch: make
        # mutate's -1.0 here is equivalent.)
        self._next = 0.0

    def slot(self):
        now = self.clock.seconds()
        start = max(now, self._next)
        self._next = start + self.delay
        if start <= now:
            return defer.succeed(None)
        return task.deferLater(self.clock, start - now, lambda: None)


@implementer(IActionExecutor)
class DriverExecutor:
    """
    Executes registry actions through the node's agents.  With a
    :class:`Stagger`, ``on`` and ``cycle`` wait for their turn first; with
    :class:`~powerctl.pserv.slots.PrioritySlots`, at most so many actions
    run at once, the most urgent first.
    """

    def __init__(self, catalogue, stagger=None, slots=None, lockout=None, circuits=None):
        self._catalogue = catalogue
        self._lockout = lockout  # issue 10: a LockoutGuard, or None
        self._stagger = stagger
        self._slots = slots
        self._circuits = circuits  # a CircuitBudgets, or None (circuits ignored)
        self._nodes = {}  # node -> KnownNode

    def configure(self, node, power, lockouts=None, since=None, circuit=None):
        """
        Remember ``node``'s power configuration; InvalidPowerDocument if bad.
        ``lockouts`` (``[{"agent", "id"}]``, sent by the region with the
        configuration) are the node's agents whose credentials are locked
        out; with ``since`` (the guard's generation before the region's
        listing was asked for) the listing is complete, so a lock-out it no
        longer names was cleared.  ``circuit``: the circuit the node is on
        (the region's ``{"name", "max_on", "spacing"}``, or None); a new
        budget of the circuit applies at once, a new circuit rebuilds the
        drivers.
        """
        try:
            circuit = Circuit.parse(circuit) if self._circuits is not None else None
        except ValueError as e:
            raise InvalidPowerDocument(str(e)) from None
        if circuit is not None:
            self._circuits.learn(circuit)
        key = json.dumps(power, sort_keys=True)
        name = circuit.name if circuit is not None else None
        known = self._nodes.get(node)
        unchanged = known is not None and known.key == key
        if not unchanged or known.circuit_name != name:
            gate = self._circuits.gate(name) if circuit is not None else None
            self._nodes[node] = KnownNode(
                key, build_node_power(self._catalogue, power, self._lockout, gate), circuit)
        elif known.circuit != circuit:
            self._nodes[node] = attrs.evolve(known, circuit=circuit)
        if self._lockout is None:
            return
        # An unchanged document has its agents registered already (a refresh
        # passes every node again: 10,000 parses and keys for nothing).
        for index, agent in () if unchanged else enumerate(PowerDoc.parse(power).agents):
            self._lockout.register(node, index, agent_key(
                self._catalogue, {"driver": agent.driver, "params": agent.params}))
        listed = {int(entry["agent"]): int(entry["id"]) for entry in lockouts or ()
                  if isinstance(entry, dict) and "agent" in entry and "id" in entry}
        if since is not None:
            self._lockout.sync(node, listed, since)
        else:
            for agent, lockout_id in listed.items():
                self._lockout.hold(node, agent, lockout_id)

    def circuit(self, node):
        """The :class:`~powerctl.pserv.circuits.Circuit` ``node`` is on, or None."""
        known = self._nodes.get(node)
        return known.circuit if known is not None else None

    def forget(self, node):
        known = self._nodes.pop(node, None)
        if self._lockout is not None:
            self._lockout.unregister(node)
        if known is not None and known.circuit is not None:
            self._circuits.forget_unused(
                {k.circuit.name for k in self._nodes.values() if k.circuit is not None})

    @property
    def lockout(self):
        """The :class:`~powerctl.pserv.lockout.LockoutGuard`, or None."""
        return self._lockout

    def digest(self, node):
        """
        A digest of ``node``'s power configuration as we drive it ('' if
        unknown): the region's ``power_digest`` of the same document (the
        circuit is not part of it: a lock-out is about credentials).
        """
        known = self._nodes.get(node)
        if known is None:
            return ""
        return hashlib.sha256(known.key.encode()).hexdigest()

    def known_nodes(self):
        return sorted(self._nodes)

    def drivers(self, node):
        """The driver objects of ``node``'s agents (empty if unknown)."""
        known = self._nodes.get(node)
        return [agent.driver for agent in known.power.agents] if known else []

    def queryable(self, node):
        """
        Whether ``node`` can be queried: some level has every agent
        queryable (a query tries the levels in order; manual agents cannot).
        """
        known = self._nodes.get(node)
        return bool(known) and any(level.verifiable for level in known.power.levels)

    def fence_refusal(self, node):
        """
        A :class:`~powerctl.drivers.topology.FenceRefused` when no level of
        ``node`` can prove a fence (its agents cannot query, none trusted),
        else None.
        """
        return self._nodes[node].power.fence_refusal()

    def config(self, node):
        """
        The power configuration last learnt for ``node`` (a dict of its
        own, decoded from the kept text: the caller may keep or change it).
        """
        return json.loads(self._nodes[node].key)

    def config_text(self, node):
        """
        ``node``'s power configuration as the kept canonical JSON text
        (KeyError if unknown): the same object while the configuration is
        unchanged, so a caller caching what it derived from it (the
        poller's PDU grouping) recognises it by identity, without decoding.
        """
        return self._nodes[node].key

    def knows(self, node):
        return node in self._nodes

    @property
    def slots(self):
        """The :class:`~powerctl.pserv.slots.PrioritySlots`, or None (unlimited)."""
        return self._slots

    @property
    def catalogue(self):
        return self._catalogue

    def _power(self, action):
        try:
            return self._nodes[action.node].power
        except KeyError:
            raise InvalidPowerDocument(f"no power configuration for node {action.node}") from None

    def execute(self, action):
        power = self._power(action)

        def run(_=None):
            if self._slots is None:
                return power.run(action.action)
            return self._slots.run(priority_of(action.action), lambda: power.run(action.action),
                                   info={"node": action.node,
                                         "operation_id": action.operation_id,
                                         "action": Action.parse(action.action).value})

        if self._stagger is None or action.action not in (Action.ON, Action.CYCLE):
            return run()
        return self._stagger.slot().addCallback(run)

    def quiesced(self, action):
        return self._power(action).quiesced()
