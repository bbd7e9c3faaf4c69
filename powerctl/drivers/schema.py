"""
Declared settings schemas for drivers.

A driver states the parameters it takes; :meth:`Schema.validate` checks a
plain ``dict`` (from JSON, a CLI ``-p key=value`` or a config file) against
it *before any I/O*, converting strings where that is unambiguous, and raises
:class:`InvalidParameters` naming the first bad parameter.  Secret parameters
are marked so that the API and logs can hide them.
"""

import ipaddress
import re
from urllib.parse import urlsplit

import attrs

from powerctl.drivers.errors import InvalidParameters

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?$")


def _as_str(value):
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _as_int(value):
    if isinstance(value, bool):
        raise ValueError("must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    raise ValueError("must be an integer")


def _as_float(value):
    if isinstance(value, bool):
        raise ValueError("must be a number")
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError("must be a number") from None


def _as_bool(value):
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _as_host(value):
    value = _as_str(value).strip()
    candidate = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        pass
    if not _HOSTNAME.match(candidate):
        raise ValueError(f"{value!r} is not a valid IP address or host name")
    return candidate


def _as_port(value):
    port = _as_int(value)
    if not 1 <= port <= 65535:
        raise ValueError("must be between 1 and 65535")
    return port


def _as_url(value):
    value = _as_str(value).strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL with a host")
    try:
        parts.port
    except ValueError as e:
        raise ValueError(f"{value!r}: {e}") from None
    return value


def _as_regex(value):
    value = _as_str(value)
    try:
        re.compile(value)
    except re.error as e:
        raise ValueError(f"not a valid regular expression: {e}") from None
    return value


def _as_mapping(value):
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError("must be an object of string keys and string values")
    return dict(value)


CONVERTERS = {
    "str": _as_str,
    "int": _as_int,
    "float": _as_float,
    "bool": _as_bool,
    "host": _as_host,
    "port": _as_port,
    "url": _as_url,
    "regex": _as_regex,
    "mapping": _as_mapping,
}


@attrs.frozen
class Param:
    """One declared parameter."""

    name: str
    type: str = attrs.field(default="str", validator=attrs.validators.in_(CONVERTERS))
    required: bool = False
    default: object = None
    choices: tuple = ()
    secret: bool = False
    help: str = ""
    minimum: float | None = None

    def convert(self, value):
        value = CONVERTERS[self.type](value)
        if self.choices and value not in self.choices:
            raise ValueError("must be one of " + ", ".join(map(str, self.choices)))
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"must be at least {self.minimum}")
        return value


@attrs.frozen
class Schema:
    """The parameters of one driver, in declaration order."""

    driver: str
    params: tuple

    def __attrs_post_init__(self):
        names = [p.name for p in self.params]
        if len(names) != len(set(names)):
            raise ValueError(f"duplicate parameter in {self.driver} schema")

    @property
    def secrets(self):
        return frozenset(p.name for p in self.params if p.secret)

    def validate(self, params):
        """
        Return a new dict of converted values with defaults filled in.

        Raises :class:`InvalidParameters` for a non-mapping, an unknown
        parameter, a missing required one or a value of the wrong type.
        """
        if not isinstance(params, dict):
            raise InvalidParameters("params", "must be an object", self.driver)
        known = {p.name: p for p in self.params}
        for name in params:
            if name not in known:
                raise InvalidParameters(
                    name,
                    "unknown parameter; expected one of " + ", ".join(known),
                    self.driver,
                )
        result = {}
        for param in self.params:
            value = params.get(param.name)
            if value is None or value == "":
                if param.required:
                    raise InvalidParameters(param.name, "is required", self.driver)
                result[param.name] = param.default
                continue
            try:
                result[param.name] = param.convert(value)
            except ValueError as e:
                raise InvalidParameters(param.name, str(e), self.driver) from None
        return result
