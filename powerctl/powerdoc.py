"""
A node's power document: the one model of it that the region, the pserv
and the CLI share, and the one way to hide its secrets.

The document, in its *levels* form (Pacemaker's fencing topology)::

    {"levels": [
        {"agents": [{"driver": "ipmi", "params": {"host": "10.0.0.5", "password": "x"}}]},
        {"agents": [{"driver": "snmp", "params": {...,"outlet": 3}, "label": "psu-a"},
                    {"driver": "snmp", "params": {...,"outlet": 4}, "label": "psu-b"}],
         "trusted_unverified": false}
     ]}

Levels are tried in order (level 1 first) until one succeeds; every agent
(device) of a level must act.  The older flat form ``{"mode": ..., "agents":
[...]}`` keeps working and is converted on read:

==============  ===================================================
``mode``        levels
==============  ===================================================
``single``      one level with its one agent
``concurrent``  one level with every agent (all must act)
``sequential``  one level per agent, in order (a fallback chain)
==============  ===================================================

A document keeps the form it was written in (:meth:`PowerDoc.to_json`), so
what was stored flat is shown flat.

:meth:`PowerDoc.parse` holds the rules every reader applies, with messages
that name the place (``power.agents[i]`` or ``power.levels[l].agents[j]``)
and the key:

* ``mode`` defaults to ``single``.  ``single`` takes exactly one agent;
  ``concurrent`` and ``sequential`` take 2 to :data:`MAX_AGENTS` agents:
  with one agent they would silently behave as ``single``, which is almost
  always a typing mistake, so it is refused.
* ``levels``: 1 to :data:`MAX_LEVELS` levels, each with 1 to
  :data:`MAX_AGENTS` agents and an optional boolean ``trusted_unverified``
  (the operator vouches that this level's off works although it cannot be
  verified by a query: a fence may then use it); at most :data:`MAX_AGENTS`
  agents in all.
* Unknown keys are refused, at the top level, in each level and in each
  agent; an agent needs a ``driver``; ``params`` is an object;
  ``pod_manager`` is a uuid.
* ``label`` (optional) names the agent in outcomes and the journal
  (``agent``); without one an agent is ``<index>:<driver>``, ``index``
  counting agents over all levels.  Labels are short names, unique within
  the document.

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
MAX_LEVELS = 8
#: The keys a level may have.
LEVEL_KEYS = ("agents", "trusted_unverified")
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

    def __init__(self, message, agent=None, parameter=None, where=None):
        if where is None:
            where = "power" if agent is None else f"power.agents[{agent}]"
        super().__init__(f"{where}: {message}")
        self.reason = message
        self.agent = agent
        self.parameter = parameter
        #: the place named (``power.levels[1].agents[0]``, say)
        self.where = where


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
    def parse(cls, agent, index, where=None):
        """
        An :class:`AgentDoc` from one agent of a document, or
        InvalidPowerDocument.  ``index`` counts agents over the whole
        document; ``where`` is the agent's place in it when not
        ``power.agents[index]``.
        """
        def refuse(message, agent, parameter=None):
            return InvalidPowerDocument(message, agent, parameter, where)

        if not isinstance(agent, dict):
            raise refuse("must be an object", index)
        unknown = sorted(set(agent) - set(AGENT_KEYS), key=str)
        if unknown:
            raise refuse(
                f"unknown key {unknown[0]!r}; expected {', '.join(AGENT_KEYS)}",
                index, unknown[0])
        if "driver" not in agent:
            raise refuse("'driver' is required", index, "driver")
        if not isinstance(agent["driver"], str):
            raise refuse(f"unknown driver {agent['driver']!r}", index, "driver")
        params = agent.get("params", {})
        if not isinstance(params, dict):
            raise refuse("'params' must be an object", index, "params")
        pod_manager = agent.get("pod_manager")
        if "pod_manager" in agent:
            try:
                pod_manager = pod_manager_uuid(agent["pod_manager"])
            except ValueError:
                raise refuse(
                    f"pod_manager {agent['pod_manager']!r} is not a uuid", index,
                    "pod_manager") from None
        label = agent.get("label")
        if "label" in agent and (not isinstance(label, str) or not _LABEL.match(label)):
            raise refuse(
                f"label {label!r} is not a short name (1-64 letters, digits, '.', '_', "
                "'-', ':', '@'; starting with a letter or digit)", index, "label")
        return cls(agent["driver"], params, pod_manager, label)


@attrs.frozen
class LevelDoc:
    """
    One level of a topology: agents that must all act, and whether the
    operator trusts its off without a verifying query (for ``fence``).
    """

    agents: tuple = attrs.field(converter=tuple)
    trusted_unverified: bool = False


@attrs.frozen
class PowerDoc:
    """
    A node's power document, past the model's rules (see the module
    docstring).  ``levels`` is the topology every reader acts on; ``mode``
    is the flat mode the document was written in (None for the levels
    form), kept so that :meth:`to_json` gives back the same form.
    """

    levels: tuple = attrs.field(converter=tuple)
    mode: str | None = None

    @property
    def agents(self):
        """Every agent, level by level, in order (the index used by names and errors)."""
        return tuple(a for level in self.levels for a in level.agents)

    def where(self, index):
        """The place of the ``index``-th agent in the document, for messages."""
        if self.mode is not None:
            return f"power.agents[{index}]"
        for number, level in enumerate(self.levels):
            if index < len(level.agents):
                return f"power.levels[{number}].agents[{index}]"
            index -= len(level.agents)
        raise IndexError(index)

    def positions(self):
        """``(level index, agent)`` for every agent, in order."""
        return [(number, a) for number, level in enumerate(self.levels) for a in level.agents]

    @classmethod
    def parse(cls, document):
        """A :class:`PowerDoc` from a JSON document, or :class:`InvalidPowerDocument`."""
        if isinstance(document, dict) and "levels" in document:
            return cls._parse_levels(document)
        if not isinstance(document, dict):
            raise InvalidPowerDocument(
                "must be an object with 'levels' (or 'mode' and 'agents')")
        unknown = sorted(set(document) - {"mode", "agents"}, key=str)
        if unknown:
            raise InvalidPowerDocument(
                f"unknown key {unknown[0]!r}; expected levels (or mode, agents)")
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
        if mode == "sequential":
            levels = tuple(LevelDoc((a,)) for a in parsed)
        else:
            levels = (LevelDoc(parsed),)
        return cls._unique(cls(levels, mode))

    @classmethod
    def _parse_levels(cls, document):
        unknown = sorted(set(document) - {"levels"}, key=str)
        if unknown:
            raise InvalidPowerDocument(
                f"unknown key {unknown[0]!r}; 'levels' takes no 'mode' or 'agents' beside it")
        levels = document["levels"]
        if not isinstance(levels, list) or not 1 <= len(levels) <= MAX_LEVELS:
            raise InvalidPowerDocument(f"'levels' must be a list of 1 to {MAX_LEVELS} levels")
        parsed, index = [], 0
        for number, level in enumerate(levels):
            where = f"power.levels[{number}]"
            if not isinstance(level, dict):
                raise InvalidPowerDocument("must be an object with 'agents'", where=where)
            unknown = sorted(set(level) - set(LEVEL_KEYS), key=str)
            if unknown:
                raise InvalidPowerDocument(
                    f"unknown key {unknown[0]!r}; expected {', '.join(LEVEL_KEYS)}",
                    parameter=unknown[0], where=where)
            trusted = level.get("trusted_unverified", False)
            if not isinstance(trusted, bool):
                raise InvalidPowerDocument("'trusted_unverified' must be true or false",
                                           parameter="trusted_unverified", where=where)
            agents = level.get("agents")
            if not isinstance(agents, list) or not 1 <= len(agents) <= MAX_AGENTS:
                raise InvalidPowerDocument(
                    f"'agents' must be a list of 1 to {MAX_AGENTS} agents",
                    parameter="agents", where=where)
            docs = []
            for position, agent in enumerate(agents):
                docs.append(AgentDoc.parse(agent, index, f"{where}.agents[{position}]"))
                index += 1
            parsed.append(LevelDoc(tuple(docs), trusted))
        if index > MAX_AGENTS:
            raise InvalidPowerDocument(
                f"at most {MAX_AGENTS} agents over all levels, not {index}")
        return cls._unique(cls(tuple(parsed)))

    @staticmethod
    def _unique(doc):
        names = [a.name(i) for i, a in enumerate(doc.agents)]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise InvalidPowerDocument(
                    f"label {name!r} names another agent too", index, "label",
                    doc.where(index))
        return doc

    def to_json(self, params=None):
        """
        The document in the form it was written in; ``params``, if given,
        replaces each agent's, in order (over all levels).
        """
        params = list(params or [None] * len(self.agents))
        if self.mode is not None:
            return {"mode": self.mode,
                    "agents": [a.to_json(p) for a, p in zip(self.agents, params)]}
        levels = []
        for level in self.levels:
            out = {"agents": [a.to_json(params.pop(0)) for a in level.agents]}
            if level.trusted_unverified:
                out["trusted_unverified"] = True
            levels.append(out)
        return {"levels": levels}

    def levels_json(self):
        """The document in the levels form, whatever form it was written in."""
        return attrs.evolve(self, mode=None).to_json()

    @property
    def pod_managers(self):
        """The canonical uuids of the pod managers the agents name, sorted."""
        return sorted({a.pod_manager for a in self.agents if a.pod_manager is not None})


def agent_list(power):
    """
    The agent entries of a power document of either form, in order (level
    by level), for readers that must tolerate documents outside the model
    (stored before an upgrade, typed by a user): what is not a list of
    agents is skipped; entries are returned as they are (the caller checks
    they are objects).
    """
    if not isinstance(power, dict):
        return []
    if "levels" in power:
        levels = power["levels"]
        found = []
        for level in levels if isinstance(levels, list) else ():
            agents = level.get("agents") if isinstance(level, dict) else None
            found.extend(agents if isinstance(agents, list) else ())
        return found
    agents = power.get("agents")
    return list(agents) if isinstance(agents, list) else []


def with_agents(power, agents):
    """
    A copy of ``power`` (either form) whose agent entries are replaced, in
    the order :func:`agent_list` gives them, by ``agents``; everything else
    is kept (shallow copies of the containers).
    """
    agents = list(agents)
    if not isinstance(power, dict):
        return power
    if "levels" in power:
        levels = power["levels"]
        if not isinstance(levels, list):
            return dict(power)
        new = []
        for level in levels:
            inner = level.get("agents") if isinstance(level, dict) else None
            if isinstance(inner, list):
                level = dict(level, agents=[agents.pop(0) for _ in inner])
            new.append(level)
        return dict(power, levels=new)
    if isinstance(power.get("agents"), list):
        return dict(power, agents=agents)
    return dict(power)


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
    shown = _copied(power)  # nothing shown shares a mutable part with the stored
    for agent in agent_list(shown):
        if isinstance(agent, dict) and isinstance(agent.get("params"), dict):
            driver = agent.get("driver")
            known = secret_names.get(driver) if isinstance(driver, str) else None
            secret = (lambda k: k in known) if known is not None else looks_secret
            agent["params"] = {
                k: (SECRET_MARK if secret(k) and v not in (None, "") else v)
                for k, v in agent["params"].items()}
    return shown


def _copied(value):
    """
    A deep copy of a JSON value (dicts and lists copied, anything else
    kept: JSON scalars are immutable); about 4x cheaper than
    ``copy.deepcopy``, which a list of 1,000 nodes paid on every row.
    Any other container is deep-copied as before.
    """
    if type(value) is dict:
        return {k: _copied(v) for k, v in value.items()}
    if type(value) is list:
        return [_copied(v) for v in value]
    if isinstance(value, (str, int, float, type(None))):
        return value
    return copy.deepcopy(value)


def secret_names_of(schemas):
    """``{driver: secret parameter names}`` from ``{driver: Schema}``, for :func:`redact`."""
    return {name: schema.secrets for name, schema in schemas.items()}
