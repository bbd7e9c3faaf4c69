"""
What the REST commands never print: secret agent parameters and pod-manager
passwords.

The API already redacts what it returns; these functions redact again on
our side, so a region that got it wrong (or an older one) still cannot put
a password on an operator's terminal.  A parameter is secret by
the project-wide rule, :func:`powerctl.powerdoc.redact`.
"""

from powerctl import powerdoc
from powerctl.cli import output


def redact_power(power, schemas):
    """A copy of a power configuration with every secret parameter hidden."""
    return powerdoc.redact(power, powerdoc.secret_names_of(schemas))


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
