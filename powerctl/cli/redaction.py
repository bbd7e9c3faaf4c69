"""
What the REST commands never print: secret agent parameters and pod-manager
passwords.

The API already redacts what it returns; these functions redact again on
our side, so a region that got it wrong (or an older one) still cannot put
a password on an operator's terminal.  A parameter is secret when its
driver's schema says so, or -- for a driver this CLI does not know -- when
its name looks like one.  Kept in one small module so that it can be
replaced by the project-wide ``redact`` in one place.
"""

import re

from powerctl.cli import output

#: Parameter names treated as secret even for a driver we do not know.
_SECRET_NAME = re.compile(r"password|secret|token|community|(^|_)key$", re.I)


def secret_names(driver, schemas):
    """The parameters ``driver``'s schema marks secret (none if unknown)."""
    schema = schemas.get(driver)
    return schema.secrets if schema is not None else frozenset()


def is_secret(name, driver, schemas):
    return name in secret_names(driver, schemas) or bool(_SECRET_NAME.search(name))


def redact_power(power, schemas):
    """A copy of a power configuration with every secret parameter hidden."""
    if not isinstance(power, dict) or not isinstance(power.get("agents"), list):
        return power
    agents = []
    for agent in power["agents"]:
        if isinstance(agent, dict) and isinstance(agent.get("params"), dict):
            driver = agent.get("driver")
            agent = dict(agent, params={
                k: (output.REDACTED if is_secret(k, driver, schemas) and v not in (None, "") else v)
                for k, v in agent["params"].items()})
        agents.append(agent)
    return dict(power, agents=agents)


def redact_node(node, schemas):
    """A node document with its power configuration redacted."""
    if isinstance(node, dict) and "power" in node:
        return dict(node, power=redact_power(node["power"], schemas))
    return node


def without_password(doc):
    """A pod manager as we may print it: the API never returns the password; make sure."""
    if isinstance(doc, dict) and doc.get("password") not in (None, ""):
        return dict(doc, password=output.REDACTED)
    return doc
