"""
Configuration files of the daemons: TOML, read with ``tomllib``.

Each daemon has one section (``[region]`` or ``[pserv]``); command-line
options override the file.  Anything missing, unknown or of the wrong type
is a :class:`ConfigError` naming the file and the key, raised before the
daemon starts anything -- a daemon that starts half-configured is worse
than one that refuses to start.
"""

import os
import socket
import tomllib

import attrs


class ConfigError(ValueError):
    """The configuration is missing or invalid."""


def _endpoint(value):
    if not isinstance(value, str) or ":" not in value:
        raise ValueError("must be a Twisted endpoint description such as tcp:5250")
    return value


def _endpoints(value):
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError("must be a non-empty list of endpoint descriptions")
    return tuple(_endpoint(v) for v in value)


def _text(value):
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    return value


def _positive(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError("must be a positive number")
    return value


def _boolean(value):
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _count(value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("must be a positive integer")
    return value


@attrs.frozen
class RegionConfig:
    name: str = attrs.field(factory=socket.gethostname)
    database: str = "dbname=powerctl"
    api_endpoint: str = "tcp:5240:interface=127.0.0.1"
    rpc_endpoint: str = "tcp:5250:interface=127.0.0.1"
    secret_file: str = "/etc/powerctl/secret"
    heartbeat_timeout: float = 30.0
    responsive_grace: float = 60.0
    pod_probe_interval: float = 60.0
    lease: float = 30.0
    # issue 10: /metrics without a token, only when an operator says so.
    metrics_public: bool = False
    # issue 10: the key that seals secrets at rest ("": powerctl.region.vault.DEFAULT_KEY_FILE,
    # created there only on a database without sealed secrets).
    key_file: str = ""
    # issue 10: plain tcp: for pservs on a non-loopback interface only when this says so.
    allow_plaintext_rpc: bool = False

    checks = {
        "name": _text, "database": _text, "api_endpoint": _endpoint,
        "rpc_endpoint": _endpoint, "secret_file": _text,
        "heartbeat_timeout": _positive, "responsive_grace": _positive,
        "pod_probe_interval": _positive, "lease": _positive,
        "metrics_public": _boolean, "key_file": _text, "allow_plaintext_rpc": _boolean,
    }


@attrs.frozen
class PservConfig:
    name: str = attrs.field(factory=socket.gethostname)
    cluster: str = "default"
    regions: tuple = ("tcp:host=127.0.0.1:port=5250",)
    secret_file: str = "/etc/powerctl/secret"
    poll_interval: float = 60.0
    poll_concurrency: int = 32
    heartbeat_interval: float = 5.0
    stagger_on: float = 0.0
    max_actions: int = 64
    manual_timeout: float = 3600.0
    lease_margin: float = 10.0
    # issue 10: a per-cluster credential (powerctl admin pserv-credential create); "": secret_file
    credential_file: str = ""
    # issue 10: authentication failures per BMC account before it is no longer tried
    auth_failure_limit: int = 3
    auth_failure_window: float = 300.0
    # issue 10: dialling a non-loopback region in plain tcp: only when this says so.
    allow_plaintext_rpc: bool = False

    checks = {
        "name": _text, "cluster": _text, "regions": _endpoints,
        "secret_file": _text, "poll_interval": _positive,
        "poll_concurrency": _count, "heartbeat_interval": _positive,
        "stagger_on": lambda v: 0.0 if v == 0 else _positive(v),
        "max_actions": _count,
        "manual_timeout": lambda v: 0.0 if v == 0 else _positive(v),
        "lease_margin": _positive, "credential_file": _text,
        "auth_failure_limit": _count, "auth_failure_window": _positive,
        "allow_plaintext_rpc": _boolean,
    }


def build(cls, values, source):
    """Check ``values`` (a dict) against ``cls.checks`` and build ``cls``."""
    unknown = set(values) - set(cls.checks)
    if unknown:
        raise ConfigError(
            f"{source}: unknown setting(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(cls.checks)}"
        )
    checked = {}
    for key, value in values.items():
        try:
            checked[key] = cls.checks[key](value)
        except ValueError as e:
            raise ConfigError(f"{source}: {key} {e}") from None
    return cls(**checked)


def load(cls, path, section, overrides=None):
    """
    Read ``[section]`` of the TOML file at ``path`` (None: defaults only),
    apply ``overrides`` (command-line values that are not None) and check.
    """
    values = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                document = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{path}: configuration file not found") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from None
        extra = set(document) - {section}
        if extra:
            raise ConfigError(f"{path}: unknown section(s) {', '.join(sorted(extra))}; expected [{section}]")
        values = document.get(section, {})
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
    values = {**values, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    return build(cls, values, path or "command line")


def read_secret(path):
    """The shared secret: the file's content, stripped; it must not be empty."""
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if mode & 0o077:  # issue 10: refused, as ssh refuses an open key
                raise ConfigError(f"secret file {path} is accessible by other users (mode "
                                  f"{mode & 0o777:04o}); refusing to use it: chmod 600 {path}")
            secret = f.read().strip()
    except OSError as e:
        raise ConfigError(f"secret file {path}: {e.strerror}") from None
    if len(secret) < 16:
        raise ConfigError(f"secret file {path}: the secret must be at least 16 bytes")
    return secret
