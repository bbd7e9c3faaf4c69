"""
The vocabulary every layer shares: power actions, power states and the
states of a journalled operation.

Glossary of the results of one power operation, in the order they are made
(four types, because each crosses a different boundary and carries what
only that boundary knows):

``Observed`` (:mod:`powerctl.registry`)
    What one *execution* saw: the state reached and the agent that acted
    (with a power topology also the acting level, each device's state and a
    degraded success's warning: its ``detail``), from the executor (the
    drivers) to the registry.  It knows nothing of callers.
``Outcome`` (:mod:`powerctl.registry`)
    What one *caller* gets when it succeeded: its operation id, its action,
    the state and agent of the execution it ran or joined
    (``coalesced_into``).  Failures are failures (``Superseded``,
    ``Cancelled``, a driver's ``PowerError``), not Outcomes.
``Report`` (:mod:`powerctl.pserv.core`)
    What the pserv tells the region about one operation over AMP
    (``ReportOutcome``): an Outcome or a failure flattened to the
    operation's terminal state (:class:`OpState`), the error and its kind,
    and the lease epoch it ran under.
``Recorded`` (:mod:`powerctl.region.store`)
    What the journal made of a report: the operation as it now stands and
    whether the report changed it (repeated and late reports do not).
"""

import enum


class PowerState(str, enum.Enum):
    """What a node (or one agent of it) is, as far as anyone knows."""

    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"
    ERROR = "error"


class Action(str, enum.Enum):
    """What can be asked of a node's power."""

    ON = "on"
    OFF = "off"
    SOFT_OFF = "soft-off"
    CYCLE = "cycle"
    QUERY = "query"
    #: a verified off that outranks everything (see powerctl.drivers.topology)
    FENCE = "fence"

    @property
    def changes_power(self):
        """True for actions that change power; ``query`` only observes."""
        return self is not Action.QUERY

    @property
    def target(self):
        """The state a successful action leaves the node in (None for query)."""
        return {
            Action.ON: PowerState.ON,
            Action.CYCLE: PowerState.ON,
            Action.OFF: PowerState.OFF,
            Action.SOFT_OFF: PowerState.OFF,
            Action.FENCE: PowerState.OFF,
        }.get(self)

    @classmethod
    def parse(cls, text):
        """Accept ``soft-off`` and ``soft_off`` alike; ValueError otherwise."""
        if isinstance(text, cls):
            return text
        try:
            return cls(str(text).replace("_", "-"))
        except ValueError:
            raise ValueError(
                f"unknown power action {text!r}; expected one of "
                + ", ".join(a.value for a in cls)
            ) from None


class OpState(str, enum.Enum):
    """Where a journalled power operation stands (``power_ops.state``).

    ``pending`` and ``running`` are open; the other four are terminal: once an
    operation reaches one, nothing rewrites it.
    """

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    CANCELLED = "cancelled"

    @property
    def terminal(self):
        return self not in (OpState.PENDING, OpState.RUNNING)


#: Every state as a plain string, in the order above (JSON, SQL, argparse).
OP_STATES = tuple(s.value for s in OpState)
#: The states an operation can end in.  Tuples, not sets: they are listed in
#: error messages, enums and pages, which must read the same every run.
TERMINAL_STATES = tuple(s.value for s in OpState if s.terminal)
#: The states of an operation still in play.
OPEN_STATES = tuple(s.value for s in OpState if not s.terminal)
#: Every power state as a plain string.
POWER_STATES = tuple(s.value for s in PowerState)
#: Every action as a plain string.
ACTIONS = tuple(a.value for a in Action)
#: The states an action can leave a node in ("on", "off"): what a node can be
#: desired to be, and what an operator can confirm.
TARGET_STATES = tuple(dict.fromkeys(a.target.value for a in Action if a.target is not None))
