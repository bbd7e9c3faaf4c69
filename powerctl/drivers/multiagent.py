"""
The flat modes of older power documents -- ``single``, ``concurrent``,
``sequential`` -- as power topologies (:mod:`powerctl.drivers.topology`).

The rules live in the topology; this module only maps a mode to levels, as
:class:`powerctl.powerdoc.PowerDoc` does for documents:

* ``single``: one level with the one agent;
* ``concurrent`` (dual power supplies): one level with every agent, so
  ``off`` needs all, ``on`` needs all (on through some only is a degraded
  success: formerly a plain one), the node is ``on`` if any agent says on,
  ``cycle`` is all-off (verified), then all-on;
* ``sequential`` (fallback): one level per agent, in order.
"""

import enum


from powerctl.drivers.topology import Agent, AgentsFailed, Level, NodeTopology

__all__ = ["Agent", "AgentsFailed", "Mode", "NodePower", "levels_of"]


class Mode(str, enum.Enum):
    SINGLE = "single"
    CONCURRENT = "concurrent"
    SEQUENTIAL = "sequential"


def levels_of(mode, agents):
    """The :class:`Level` tuple of a flat ``mode`` over ``agents``."""
    mode, agents = Mode(mode), tuple(agents)
    if not agents:
        raise ValueError("a node needs at least one power agent")
    if mode is Mode.SINGLE and len(agents) != 1:
        raise ValueError("mode 'single' takes exactly one agent")
    if mode is Mode.SEQUENTIAL:
        return tuple(Level((a,)) for a in agents)
    return (Level(agents),)


def NodePower(mode, agents):  # noqa: N802 -- kept as the old class's name
    """A :class:`NodeTopology` for a flat ``mode`` over ``agents``."""
    return NodeTopology(levels_of(mode, agents))


