"""
A node's power document: the one model of it that the region, the pserv
and the CLI share, and the one way to hide its secrets.

The document::

    {"mode": "single" | "concurrent" | "sequential",
     "agents": [
        {"driver": "ipmi", "params": {"host": "10.0.0.5", "password": "x"},
         "label": "psu-a"},
        {"driver": "redfish", "pod_manager": "<uuid>", "params": {"system": "7"}}
     ]}

:meth:`PowerDoc.parse` holds the rules every reader applies, with messages
that name the agent index and the key:

* ``mode`` defaults to ``single``.  ``single`` takes exactly one agent;
  ``concurrent`` and ``sequential`` take 2 to :data:`MAX_AGENTS` agents:
  with one agent they would silently behave as ``single``, which is almost
  always a typing mistake, so it is refused.
* Unknown keys are refused, at the top level and in each agent; an agent
  needs a ``driver``; ``params`` is an object; ``pod_manager`` is a uuid.
* ``label`` (optional) names the agent in outcomes and the journal
  (``agent``); without one an agent is ``<index>:<driver>``.  Labels are
  short names, unique within the document.

What the model does not know -- whether a driver exists and accepts its
``params``, whether a pod manager exists -- is checked by whoever holds the
driver catalogue and the pod managers (the region's
:mod:`powerctl.region.powerconfig`, the pserv's executor).

This module depends on nothing of the region's (no database, no store), so
the pserv and the CLI import it as they are.
"""

import copy
import re
import uuid as uuidlib

import attrs

MODES = ("single", "concurrent", "sequential")
MAX_AGENTS = 8
#: The keys an agent may have.
AGENT_KEYS = ("driver", "params", "pod_manager", "label")
#: What a secret parameter shows instead of its value.
SECRET_MARK = "(set)"
#: Parameter names taken for secrets when the driver (so its schema) is unknown.
_SECRETISH = re.compile(r"password|secret|token|community|key", re.IGNORECASE)
#: What a label looks like (also the OpenAPI document's pattern).
LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$"
_LABEL = re.compile(LABEL_PATTERN)


class InvalidPowerDocument(ValueError):
    """
    A power document breaks the model's rules; the message says where
    (``power`` or ``power.agents[i]``) and why.  ``agent`` is the index of
    the agent at fault (or None), ``parameter`` the key or driver parameter
    (or None).  The region answers it as
    :class:`~powerctl.region.errors.PowerDocumentRefused`; the pserv refuses
    the operation with :class:`~powerctl.rpc.commands.UnusablePowerConfig`.
    """

    def __init__(self, message, agent=None, parameter=None):
        where = "power" if agent is None else f"power.agents[{agent}]"
        super().__init__(f"{where}: {message}")
        self.reason = message
        self.agent = agent
        self.parameter = parameter


def pod_manager_uuid(text):
    """Canonical text of a pod manager uuid; ValueError if it is not one."""
    if not isinstance(text, str):
        raise ValueError("must be a uuid string")
    return str(uuidlib.UUID(text))


@attrs.frozen
class AgentDoc:
    """
    One agent of a power document: a driver and its parameters, or a pod
    manager's address and credentials plus the parameters that remain.
    ``params`` is the document's own mapping, not yet checked against the
    driver's schema.
    """

    driver: str
    params: dict = attrs.field(factory=dict, converter=dict)
    pod_manager: str = None
    label: str = None

    def name(self, index):
        """What outcomes and the journal call this agent (the ``index``-th)."""
        return self.label or f"{index}:{self.driver}"

    def to_json(self, params=None):
        """The agent as a document, with ``params`` instead of its own if given."""
        out = {"driver": self.driver}
        if self.pod_manager is not None:
            out["pod_manager"] = self.pod_manager
        if self.label is not None:
            out["label"] = self.label
        out["params"] = dict(self.params if params is None else params)
        return out

    @classmethod
    def parse(cls, agent, index):
        """An :class:`AgentDoc` from one agent of a document, or InvalidPowerDocument."""
        if not isinstance(agent, dict):
            raise InvalidPowerDocument("must be an object", index)
        unknown = sorted(set(agent) - set(AGENT_KEYS), key=str)
        if unknown:
            raise InvalidPowerDocument(
                f"unknown key {unknown[0]!r}; expected {', '.join(AGENT_KEYS)}",
                index, unknown[0])
        if "driver" not in agent:
            raise InvalidPowerDocument("'driver' is required", index, "driver")
        if not isinstance(agent["driver"], str):
            raise InvalidPowerDocument(f"unknown driver {agent['driver']!r}", index, "driver")
        params = agent.get("params", {})
        if not isinstance(params, dict):
            raise InvalidPowerDocument("'params' must be an object", index, "params")
        pod_manager = agent.get("pod_manager")
        if "pod_manager" in agent:
            try:
                pod_manager = pod_manager_uuid(agent["pod_manager"])
            except ValueError:
                raise InvalidPowerDocument(
                    f"pod_manager {agent['pod_manager']!r} is not a uuid", index,
                    "pod_manager") from None
        label = agent.get("label")
        if "label" in agent and (not isinstance(label, str) or not _LABEL.match(label)):
            raise InvalidPowerDocument(
                f"label {label!r} is not a short name (1-64 letters, digits, '.', '_', "
                "'-', ':', '@'; starting with a letter or digit)", index, "label")
        return cls(agent["driver"], params, pod_manager, label)


@attrs.frozen
class PowerDoc:
    """A node's power document, past the model's rules (see the module docstring)."""

    mode: str
    agents: tuple

    @classmethod
    def parse(cls, document):
        """A :class:`PowerDoc` from a JSON document, or :class:`InvalidPowerDocument`."""
        if not isinstance(document, dict):
            raise InvalidPowerDocument("must be an object with 'mode' and 'agents'")
        unknown = sorted(set(document) - {"mode", "agents"}, key=str)
        if unknown:
            raise InvalidPowerDocument(f"unknown key {unknown[0]!r}; expected mode, agents")
        mode = document.get("mode", "single")
        if mode not in MODES:
            raise InvalidPowerDocument(f"mode {mode!r} is not one of {', '.join(MODES)}")
        agents = document.get("agents")
        if not isinstance(agents, list) or not agents:
            raise InvalidPowerDocument("'agents' must be a non-empty list")
        if mode == "single" and len(agents) != 1:
            raise InvalidPowerDocument(f"mode single takes exactly 1 agent, not {len(agents)}")
        if mode != "single" and not 2 <= len(agents) <= MAX_AGENTS:
            raise InvalidPowerDocument(
                f"mode {mode} takes 2 to {MAX_AGENTS} agents, not {len(agents)}")
        parsed = tuple(AgentDoc.parse(a, i) for i, a in enumerate(agents))
        names = [a.name(i) for i, a in enumerate(parsed)]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise InvalidPowerDocument(
                    f"label {name!r} names another agent too", index, "label")
        return cls(mode, parsed)

    def to_json(self, params=None):
        """The document; ``params``, if given, replaces each agent's, in order."""
        params = params or [None] * len(self.agents)
        return {"mode": self.mode,
                "agents": [a.to_json(p) for a, p in zip(self.agents, params)]}

    @property
    def pod_managers(self):
        """The canonical uuids of the pod managers the agents name, sorted."""
        return sorted({a.pod_manager for a in self.agents if a.pod_manager is not None})


def looks_secret(name):
    """Whether a parameter of a driver we do not know should be taken for a secret."""
    return bool(_SECRETISH.search(str(name)))


def redact(power, secret_names):
    """
    A copy of ``power`` safe to show or log: every set secret parameter is
    replaced by ``"(set)"``.

    ``secret_names`` maps a driver name to the names of its secret
    parameters (``{name: schema.secrets}``, e.g. from
    :func:`secret_names_of`); an agent of a driver it does not know has
    every parameter that :func:`looks_secret` hidden.  Tolerates documents
    that do not follow the model (stored before an upgrade, typed by a
    user): whatever is not an agent's ``params`` object is copied as is.
    """
    shown = copy.deepcopy(power)  # nothing shown shares a mutable part with the stored
    agents = shown.get("agents") if isinstance(shown, dict) else None
    for agent in agents if isinstance(agents, list) else ():
        if isinstance(agent, dict) and isinstance(agent.get("params"), dict):
            driver = agent.get("driver")
            known = secret_names.get(driver) if isinstance(driver, str) else None
            secret = (lambda k: k in known) if known is not None else looks_secret
            agent["params"] = {
                k: (SECRET_MARK if secret(k) and v not in (None, "") else v)
                for k, v in agent["params"].items()}
    return shown


def secret_names_of(schemas):
    """``{driver: secret parameter names}`` from ``{driver: Schema}``, for :func:`redact`."""
    return {name: schema.secrets for name, schema in schemas.items()}
