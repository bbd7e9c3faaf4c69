"""
A node's power through one or more agents: ``single``, ``concurrent``,
``sequential``.

Pure logic over driver Deferreds (no I/O of its own), so the rules are
tested with a ``Clock`` and fake drivers:

* ``concurrent`` (dual power supplies): every agent is driven at once.
  ``off``/``soft-off`` succeed only when *all* agents reach off; ``on``
  succeeds when *one* does; the node is ``on`` if any agent says on, ``off``
  only if all say off; ``cycle`` is all-off (verified), then on.
* ``sequential`` (fallback): agents are tried in order, each with its own
  retries; the next one is used only when the previous one failed.

Results are :class:`~powerctl.registry.Observed`: the state and the label of
the agent(s) that did the work, which the journal records.
"""

import enum

import attrs
from twisted.internet import defer

from powerctl.drivers.errors import PowerError
from powerctl.drivers.interface import perform
from powerctl.power import Action, PowerState
from powerctl.registry.actions import Observed


class Mode(str, enum.Enum):
    SINGLE = "single"
    CONCURRENT = "concurrent"
    SEQUENTIAL = "sequential"


class AgentsFailed(PowerError):
    """
    Every agent needed failed.  ``failures`` maps agent labels to their
    errors; ``kind`` is theirs when they agree (e.g. all ``unreachable``).
    """

    def __init__(self, failures):
        self.failures = dict(failures)
        kinds = {getattr(e, "kind", "error") for e in self.failures.values()}
        self.kind = kinds.pop() if len(kinds) == 1 else "multiple"
        self.transient = all(getattr(e, "transient", False) for e in self.failures.values())
        super().__init__("; ".join(f"{label}: {e}" for label, e in self.failures.items()))


@attrs.frozen
class Agent:
    """One driver bound to one device, with a label safe to show and log."""

    label: str
    driver: object  # IPowerDriver




def _call(agent, action):
    return perform(agent.driver, action)


async def _all(agents, action):
    """Run ``action`` on every agent at once: [(agent, state or exception)]."""
    results = await defer.DeferredList(
        [_call(a, action) for a in agents], consumeErrors=True)
    return [
        (agent, value if ok else value.value)
        for agent, (ok, value) in zip(agents, results)
    ]


@attrs.frozen
class NodePower:
    """The power of one node: its agents and its mode."""

    mode: Mode = attrs.field(converter=Mode)
    agents: tuple = attrs.field(converter=tuple)

    def __attrs_post_init__(self):
        if not self.agents:
            raise ValueError("a node needs at least one power agent")
        if self.mode is Mode.SINGLE and len(self.agents) != 1:
            raise ValueError("mode 'single' takes exactly one agent")

    def run(self, action):
        """Deferred[Observed]: do ``action``; cancelling cancels every agent."""
        action = Action.parse(action)
        if self.mode is Mode.SEQUENTIAL:
            return defer.ensureDeferred(self._sequential(action))
        if self.mode is Mode.SINGLE:
            agent = self.agents[0]
            return _call(agent, action).addCallback(lambda s: Observed(s, agent.label))
        return defer.ensureDeferred(self._concurrent(action))

    def quiesced(self):
        """Fires once no agent still has a call running against its device."""
        return defer.DeferredList(
            [defer.maybeDeferred(a.driver.quiesced) for a in self.agents],
            consumeErrors=True,
        ).addCallback(lambda _: None)

    async def _sequential(self, action):
        failures = {}
        for agent in self.agents:
            try:
                state = await _call(agent, action)
            except PowerError as e:
                failures[agent.label] = e
                continue
            return Observed(state, agent.label)
        raise AgentsFailed(failures)

    async def _concurrent(self, action):
        if action is Action.CYCLE:
            await self._concurrent(Action.OFF)
            return await self._concurrent(Action.ON)
        results = await _all(self.agents, action)
        failures = {a.label: r for a, r in results if isinstance(r, BaseException)}
        for error in failures.values():
            if not isinstance(error, PowerError):
                raise error  # a bug, not a device failure: do not hide it
        states = {a.label: r for a, r in results if not isinstance(r, BaseException)}
        on = [label for label, s in states.items() if s == PowerState.ON]
        if action is Action.QUERY:
            if on:
                return Observed(PowerState.ON, ",".join(on))
            if failures:
                raise AgentsFailed(failures)
            return Observed(PowerState.OFF, ",".join(states))
        if action is Action.ON:
            if on:
                return Observed(PowerState.ON, ",".join(on))
            raise AgentsFailed(failures)
        # off and soft-off need every agent
        if failures:
            raise AgentsFailed(failures)
        return Observed(PowerState.OFF, ",".join(states))
