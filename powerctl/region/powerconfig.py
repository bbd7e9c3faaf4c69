"""
A node's power configuration: validation, resolution and redaction.

The document users write::

    {"mode": "single" | "concurrent" | "sequential",
     "agents": [
        {"driver": "ipmi", "params": {"host": "10.0.0.5", "password": "x"}},
        {"driver": "redfish", "pod_manager": "<uuid>", "params": {"system": "7"}}
     ]}

Rules (checked before anything is written, with messages that name the
agent index and the parameter):

* ``mode`` defaults to ``single``.  ``single`` takes exactly one agent;
  ``concurrent`` and ``sequential`` take 2 to :data:`MAX_AGENTS` agents:
  with one agent they would silently behave as ``single``, which is almost
  always a typing mistake, so it is refused.
* Unknown keys are refused, at the top level and in each agent.
* ``params`` are validated by the driver's schema (converted, e.g.
  ``"623"`` becomes ``623``).
* An agent with ``pod_manager`` gets its address and credentials from that
  pod manager, whose ``driver`` must equal the agent's.  What a pod manager
  supplies (see :func:`pod_manager_params`):

  - ``url`` -> the driver's ``url`` parameter, or, for drivers that take a
    ``host`` instead, the URL's host name (and its port, as ``port``);
  - ``username`` -> ``username`` (or ``user``, e.g. SNMPv3), when set;
  - ``password`` -> ``password``, when set and the driver declares it.

  The agent's own ``params`` must not repeat what the pod manager supplies
  (two sources of truth for one address would disagree sooner or later);
  they carry the rest, typically an outlet, port or system id.

What is *stored* is the normalised document: the agent's own parameters
only, converted, without defaults (so a changed default applies to old
nodes) and without the pod manager's credentials (so a password change on a
pod manager applies to every node at once).  What a pserv *receives* is the
resolved document (:func:`resolve_power`): every agent's full, validated
parameters, pod manager values merged in.
"""

import copy
import uuid as uuidlib
from urllib.parse import urlsplit

from powerctl.drivers.errors import DriverSettingsError
from powerctl.region.errors import InvalidInput, PowerDocumentRefused

MODES = ("single", "concurrent", "sequential")
MAX_AGENTS = 8
#: What a secret parameter shows instead of its value.
SECRET_MARK = "(set)"
#: Parameter-name fragments treated as secret when the driver is unknown.
_SECRETISH = ("password", "community", "key", "secret", "token")


def pod_manager_uuid(text):
    """Canonical text of a pod manager uuid; ValueError if it is not one."""
    if not isinstance(text, str):
        raise ValueError("must be a uuid string")
    return str(uuidlib.UUID(text))


def pod_manager_params(schema, pod_manager):
    """
    The parameters ``pod_manager`` (a mapping with url, username, password)
    supplies to an agent of the driver described by ``schema``.
    """
    declared = {p.name for p in schema.params}
    supplied = {}
    url = pod_manager.get("url") or ""
    if "url" in declared:
        supplied["url"] = url
    elif "host" in declared:
        parts = urlsplit(url)
        supplied["host"] = parts.hostname or ""
        if parts.port and "port" in declared:
            supplied["port"] = parts.port
    for field, targets in (("username", ("username", "user")), ("password", ("password",))):
        value = pod_manager.get(field) or ""
        target = next((t for t in targets if t in declared), None)
        if value and target:
            supplied[target] = value
    return supplied


def check_pod_manager(catalogue, driver, url, username="", password=""):
    """
    Refuse a pod manager whose driver is unknown or whose url/credentials
    the driver would not accept, so that bad values are caught when the
    pod manager is written rather than when a node is powered.
    """
    try:
        schema = catalogue.get(driver).schema
    except DriverSettingsError as e:
        raise InvalidInput(f"driver: {e}") from None
    if not isinstance(url, str) or not urlsplit(url).hostname:
        raise InvalidInput(f"url: {url!r} is not a URL with a host")
    supplied = pod_manager_params(
        schema, {"url": url, "username": username, "password": password})
    params = {p.name: p for p in schema.params}
    if not any(k in supplied for k in ("url", "host")):
        raise InvalidInput(f"driver: {driver} agents take no url or host; "
                           "they cannot use a pod manager")
    for name, value in supplied.items():
        try:
            params[name].convert(value)
        except ValueError as e:
            field = "url" if name in ("url", "host", "port") else name
            raise InvalidInput(f"{field}: {e}") from None


def _agent_keys(agent, index):
    """Refuse a non-object agent and keys other than driver/params/pod_manager."""
    if not isinstance(agent, dict):
        raise PowerDocumentRefused("must be an object", index)
    unknown = sorted(set(agent) - {"driver", "params", "pod_manager"})
    if unknown:
        raise PowerDocumentRefused(
            f"unknown key {unknown[0]!r}; expected driver, params, pod_manager",
            index, unknown[0])
    if "driver" not in agent:
        raise PowerDocumentRefused("'driver' is required", index, "driver")


def _pod_manager_of(agent, index, pod_managers):
    """The pod manager an agent names (canonical uuid, record), or (None, None)."""
    if "pod_manager" not in agent:
        return None, None
    try:
        key = pod_manager_uuid(agent["pod_manager"])
    except ValueError:
        raise PowerDocumentRefused(
            f"pod_manager {agent['pod_manager']!r} is not a uuid", index,
            "pod_manager") from None
    record = pod_managers.get(key)
    if record is None:
        raise PowerDocumentRefused(f"pod manager {key} does not exist", index, "pod_manager")
    if record.get("driver", agent["driver"]) != agent["driver"]:
        raise PowerDocumentRefused(
            f"pod manager {record.get('name', key)!r} is a {record['driver']} pod "
            f"manager; the agent's driver is {agent['driver']}", index, "driver")
    return key, record


def _check_agent(agent, index, catalogue, pod_managers):
    """
    Validate one agent.  Returns ``(stored, resolved)`` agent dicts: the
    normalised form to store and the full form a pserv acts on.
    """
    _agent_keys(agent, index)
    driver = agent["driver"]
    try:
        schema = catalogue.get(driver).schema
    except DriverSettingsError as e:
        raise PowerDocumentRefused(str(e), index, "driver") from None
    params = agent.get("params", {})
    if not isinstance(params, dict):
        raise PowerDocumentRefused("'params' must be an object", index, "params")
    pm_key, pm = _pod_manager_of(agent, index, pod_managers)
    supplied = pod_manager_params(schema, pm) if pm else {}
    for name in params:
        if name in supplied:
            raise PowerDocumentRefused(
                f"parameter {name!r} is supplied by pod manager "
                f"{pm.get('name', pm_key)!r}; remove it", index, name)
    try:
        full = schema.validate({**params, **supplied})
    except DriverSettingsError as e:
        raise PowerDocumentRefused(str(e), index, getattr(e, "parameter", None)) from None
    own = {k: full[k] for k in params if full.get(k) is not None}
    stored = {"driver": driver, "params": own}
    resolved = {"driver": driver, "params": full}
    if pm_key:
        stored = {"driver": driver, "pod_manager": pm_key, "params": own}
        resolved = {"driver": driver, "pod_manager": pm_key, "params": full}
    return stored, resolved


def _check(power, catalogue, pod_managers):
    """Validate a whole document; returns (stored, resolved) documents."""
    if not isinstance(power, dict):
        raise PowerDocumentRefused("must be an object with 'mode' and 'agents'")
    unknown = sorted(set(power) - {"mode", "agents"})
    if unknown:
        raise PowerDocumentRefused(f"unknown key {unknown[0]!r}; expected mode, agents")
    mode = power.get("mode", "single")
    if mode not in MODES:
        raise PowerDocumentRefused(f"mode {mode!r} is not one of {', '.join(MODES)}")
    agents = power.get("agents")
    if not isinstance(agents, list) or not agents:
        raise PowerDocumentRefused("'agents' must be a non-empty list")
    if mode == "single" and len(agents) != 1:
        raise PowerDocumentRefused(f"mode single takes exactly 1 agent, not {len(agents)}")
    if mode != "single" and not 2 <= len(agents) <= MAX_AGENTS:
        raise PowerDocumentRefused(
            f"mode {mode} takes 2 to {MAX_AGENTS} agents, not {len(agents)}")
    checked = [_check_agent(a, i, catalogue, pod_managers or {}) for i, a in enumerate(agents)]
    return ({"mode": mode, "agents": [s for s, _ in checked]},
            {"mode": mode, "agents": [r for _, r in checked]})


def referenced_pod_managers(power):
    """
    The canonical uuids of the pod managers a (not yet validated) document
    names, so the store can fetch them before validating.  Malformed values
    are skipped here; validation reports them.
    """
    found = set()
    agents = power.get("agents") if isinstance(power, dict) else None
    for agent in agents if isinstance(agents, list) else ():
        if isinstance(agent, dict) and "pod_manager" in agent:
            try:
                found.add(pod_manager_uuid(agent["pod_manager"]))
            except ValueError:
                pass
    return sorted(found)


def validate_power(power, catalogue, pod_managers=None):
    """
    The normalised document to store, or :class:`PowerDocumentRefused`.

    ``pod_managers`` maps canonical uuid to a pod manager record (driver,
    name, url, username, password) for each uuid the document names.
    """
    return _check(power, catalogue, pod_managers)[0]


def resolve_power(power, catalogue, pod_managers=None):
    """The stored ``power`` with every agent's full parameters, for a pserv."""
    return _check(power, catalogue, pod_managers)[1]


def _secrets_of(catalogue, driver, params):
    """Names of the secret parameters of an agent (guessing for unknown drivers)."""
    try:
        return catalogue.get(driver).schema.secrets
    except DriverSettingsError:
        return frozenset(k for k in params if any(s in k.lower() for s in _SECRETISH))


def redact(power, catalogue):
    """
    A copy of ``power`` safe to show or log: every set secret parameter is
    replaced by ``"(set)"``.  Tolerates documents that no longer validate.
    """
    shown = copy.deepcopy(power)
    for agent in shown.get("agents", ()) if isinstance(shown, dict) else ():
        if isinstance(agent, dict) and isinstance(agent.get("params"), dict):
            secrets = _secrets_of(catalogue, agent.get("driver"), agent["params"])
            agent["params"] = {
                k: (SECRET_MARK if k in secrets and v not in (None, "") else v)
                for k, v in agent["params"].items()
            }
    return shown


def restore_secrets(power, previous, catalogue):
    """
    ``power`` with each ``"(set)"`` secret replaced by the value stored in
    ``previous`` for the same agent (same index and driver), so a client can
    GET a node, change it and PUT it back without knowing its passwords.
    ``previous`` None (a new node): ``"(set)"`` is refused, not stored.
    """
    if not isinstance(power, dict) or not isinstance(power.get("agents"), list):
        return power
    old_agents = (previous or {}).get("agents") or []
    result = dict(power, agents=[])
    for index, agent in enumerate(power["agents"]):
        if isinstance(agent, dict) and isinstance(agent.get("params"), dict):
            old = old_agents[index] if index < len(old_agents) else None
            agent = dict(agent, params=_restore_agent(agent, old, index, catalogue))
        result["agents"].append(agent)
    return result


def _restore_agent(agent, old, index, catalogue):
    """One agent's params with ``"(set)"`` secrets taken from ``old``."""
    secrets = _secrets_of(catalogue, agent.get("driver"), agent["params"])
    same = isinstance(old, dict) and old.get("driver") == agent.get("driver")
    old_params = old.get("params", {}) if same else {}
    params = dict(agent["params"])
    for name, value in agent["params"].items():
        if name in secrets and value == SECRET_MARK:
            if old_params.get(name) in (None, ""):
                raise PowerDocumentRefused(
                    f"parameter {name!r} is {SECRET_MARK!r} but no value is stored "
                    "for it; send the secret itself", index, name)
            params[name] = old_params[name]
    return params
