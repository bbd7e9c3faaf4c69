"""
The region's fencing decisions, pure (no database, no clock of their own):

* :func:`fence_refusal`: a fence request for a node none of whose levels
  can prove it off is refused before anything is journalled, naming the
  agents that cannot query.  Whether an agent can query is its driver's
  capability (``capabilities.queryable``, or ``capabilities_for(params)``
  when it depends on the parameters, as a webhook's on ``query_url``).
* :func:`reusable_fence`: a fence request for a node whose last fence
  succeeded less than ``fence_reuse_seconds`` ago, with nothing switched
  on since, coalesces into that fence: no hardware call, the journal says
  which operation it joined.
* :func:`node_bounds`: the per-device, per-level and total time bounds of
  each action on a node, derived from its drivers' settings, for the
  node's view.
"""

import attrs

from powerctl.drivers.errors import DriverSettingsError
from powerctl.drivers.topology import derived_bounds, timing_of
from powerctl.power import Action
from powerctl.powerdoc import InvalidPowerDocument, PowerDoc

#: The default of the region's ``fence_reuse_seconds``.
DEFAULT_FENCE_REUSE = 60.0
#: What "switched on" means: an operation with one of these actions.
SWITCHING_ON = (Action.ON.value, Action.CYCLE.value)


def agent_queryable(catalogue, agent):
    """Whether an :class:`~powerctl.powerdoc.AgentDoc`'s device can be queried."""
    try:
        driver_type = catalogue.get(agent.driver)
    except DriverSettingsError:
        return False
    per_agent = getattr(driver_type, "capabilities_for", None)
    capabilities = per_agent(agent.params) if per_agent is not None else getattr(
        driver_type, "capabilities", None)
    return capabilities is None or bool(capabilities.queryable)


def fence_refusal(power, catalogue):
    """
    None when some level of ``power`` (a stored document) can fence -- every
    agent queryable, or the level ``trusted_unverified`` -- else the reason,
    naming the agents that cannot query.
    """
    try:
        doc = PowerDoc.parse(power)
    except InvalidPowerDocument as e:
        return f"the node's power configuration is unusable: {e}"
    blind = []
    index = 0
    for level in doc.levels:
        names = []
        for agent in level.agents:
            if not agent_queryable(catalogue, agent):
                names.append(f"{agent.name(index)} ({agent.driver})")
            index += 1
        if level.trusted_unverified or not names:
            return None
        blind.extend(names)
    return ("no level can verify the node off; agents that cannot query: "
            + ", ".join(blind)
            + " (mark a level trusted_unverified to fence without a verifying query)")


@attrs.frozen
class FenceRecord:
    """What the journal says about one node's fences and switch-ons."""

    #: the last fence of the node that succeeded: its id and when it ended
    #: (seconds since the epoch), or None
    last_fence_id: int | None
    last_fence_at: float | None
    #: an on/cycle operation journalled after that fence (any state), or the
    #: node observed on since
    switched_on_since: bool


def reusable_fence(record, now, reuse_seconds):
    """
    The id of the fence a new fence request coalesces into, or None: the
    last fence succeeded less than ``reuse_seconds`` before ``now`` and
    nothing switched the node on since.  ``reuse_seconds`` 0 turns it off.
    """
    if not reuse_seconds or record.last_fence_id is None or record.last_fence_at is None:
        return None
    if record.switched_on_since:
        return None
    age = now - record.last_fence_at
    if age < 0 or age >= reuse_seconds:
        return None
    return record.last_fence_id


def node_bounds(power, catalogue, actions=(Action.OFF, Action.ON, Action.CYCLE, Action.FENCE)):
    """
    ``{action: derived bounds}`` (see
    :func:`powerctl.drivers.topology.derived_bounds`) for a stored power
    document, or None if it does not parse.  Timings are the region's
    driver catalogue's (the pservs run the same defaults unless configured
    otherwise) with each agent's own ``timeout``.
    """
    try:
        doc = PowerDoc.parse(power)
    except InvalidPowerDocument:
        return None
    levels, index = [], 0
    for level in doc.levels:
        devices = []
        for agent in level.agents:
            try:
                driver_type = catalogue.get(agent.driver)
            except DriverSettingsError:
                driver_type = None
            devices.append((agent.name(index), timing_of(agent.driver, driver_type,
                                                         agent.params)))
            index += 1
        levels.append(devices)
    return {Action.parse(a).value: derived_bounds(levels, a) for a in actions}
