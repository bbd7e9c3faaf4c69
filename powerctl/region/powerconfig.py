"""
A node's power configuration on the region: validation against the driver
catalogue and the pod managers, resolution for the pservs, and keeping
secrets across a GET-change-PUT.

The document's own rules (keys, modes, agent counts, labels) are the shared
model's, :class:`powerctl.powerdoc.PowerDoc`; what is checked here needs
what only the region has:

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
parameters, pod manager values merged in.  What is *shown* goes through
:func:`powerctl.powerdoc.redact` with :func:`secret_names` first.
"""

from urllib.parse import urlsplit

from powerctl.drivers.errors import DriverSettingsError
from powerctl.powerdoc import (
    SECRET_MARK, InvalidPowerDocument, PowerDoc, agent_list, looks_secret, pod_manager_uuid,
    with_agents)
from powerctl.region.errors import InvalidInput, PowerDocumentRefused

__all__ = ["check_pod_manager", "pod_manager_params", "pod_manager_uuid",
           "referenced_pod_managers", "resolve_power", "restore_secrets", "secret_names",
           "validate_power"]


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


def _pod_manager_of(agent, index, pod_managers, where=None):
    """The pod manager record an agent names, or None."""
    if agent.pod_manager is None:
        return None
    record = pod_managers.get(agent.pod_manager)
    if record is None:
        raise PowerDocumentRefused(
            f"pod manager {agent.pod_manager} does not exist", index, "pod_manager", where)
    if record.get("driver", agent.driver) != agent.driver:
        raise PowerDocumentRefused(
            f"pod manager {record.get('name', agent.pod_manager)!r} is a {record['driver']} "
            f"pod manager; the agent's driver is {agent.driver}", index, "driver", where)
    return record


def _check_agent(agent, index, catalogue, pod_managers, where=None):
    """
    Validate one :class:`~powerctl.powerdoc.AgentDoc`'s parameters.  Returns
    ``(stored, resolved)`` parameters: the normalised ones to store and the
    full ones a pserv acts on.  ``where`` names the agent's place in messages.
    """
    try:
        schema = catalogue.get(agent.driver).schema
    except DriverSettingsError as e:
        raise PowerDocumentRefused(str(e), index, "driver", where) from None
    pm = _pod_manager_of(agent, index, pod_managers, where)
    supplied = pod_manager_params(schema, pm) if pm else {}
    for name in agent.params:
        if name in supplied:
            raise PowerDocumentRefused(
                f"parameter {name!r} is supplied by pod manager "
                f"{pm.get('name', agent.pod_manager)!r}; remove it", index, name, where)
    try:
        full = schema.validate({**agent.params, **supplied})
    except DriverSettingsError as e:
        raise PowerDocumentRefused(
            str(e), index, getattr(e, "parameter", None), where) from None
    own = {k: full[k] for k in agent.params if full.get(k) is not None}
    return own, full


def _check(power, catalogue, pod_managers):
    """Validate a whole document; returns (stored, resolved) documents."""
    try:
        doc = PowerDoc.parse(power)
    except InvalidPowerDocument as e:
        raise PowerDocumentRefused.of(e) from None
    checked = [_check_agent(a, i, catalogue, pod_managers or {}, doc.where(i))
               for i, a in enumerate(doc.agents)]
    return (doc.to_json([own for own, _ in checked]),
            doc.to_json([full for _, full in checked]))


def referenced_pod_managers(power):
    """
    The canonical uuids of the pod managers a (not yet validated) document
    names, so the store can fetch them before validating.  Malformed values
    are skipped here; validation reports them.
    """
    found = set()
    for agent in agent_list(power):
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


def secret_names(catalogue):
    """``{driver: secret parameter names}`` of the catalogue, for :func:`powerctl.powerdoc.redact`."""
    return {name: catalogue.get(name).schema.secrets for name in catalogue.names}


def _secrets_of(catalogue, driver, params):
    """Names of the secret parameters of an agent (as redact guesses for unknown drivers)."""
    try:
        return catalogue.get(driver).schema.secrets
    except DriverSettingsError:
        return frozenset(k for k in params if looks_secret(k))


def restore_secrets(power, previous, catalogue):
    """
    ``power`` with each ``"(set)"`` secret replaced by the value stored in
    ``previous`` for the same agent (same index and driver), so a client can
    GET a node, change it and PUT it back without knowing its passwords.
    ``previous`` None (a new node): ``"(set)"`` is refused, not stored.
    """
    if not isinstance(power, dict):
        return power
    old_agents = agent_list(previous)
    agents = []
    for index, agent in enumerate(agent_list(power)):
        if isinstance(agent, dict) and isinstance(agent.get("params"), dict):
            old = old_agents[index] if index < len(old_agents) else None
            agent = dict(agent, params=_restore_agent(agent, old, index, catalogue))
        agents.append(agent)
    return with_agents(power, agents)


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
