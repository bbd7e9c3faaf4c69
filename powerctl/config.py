"""
Configuration files of the daemons: TOML, read with ``tomllib``.

Each daemon has one section (``[region]`` or ``[pserv]``); command-line
options override the file.  Anything missing, unknown or of the wrong type
is a :class:`ConfigError` naming the file and the key, raised before the
daemon starts anything -- a daemon that starts half-configured is worse
than one that refuses to start.

The settings are attrs classes whose field validators do the checking, so
a settings object built in code (the demo, the tests) is held to the same
rules as one read from a file.
"""

import os
import socket
import tomllib

import attrs


class ConfigError(ValueError):
    """The configuration is missing or invalid."""


class _Invalid(ValueError):
    """A setting's value is refused: ``setting`` names it, ``reason`` says why."""

    def __init__(self, setting, reason):
        super().__init__(f"{setting} {reason}")
        self.setting = setting
        self.reason = reason


def _check(test, reason):
    """An attrs validator refusing, with ``reason``, any value ``test`` rejects."""

    def validate(instance, attribute, value):
        if not test(value):
            raise _Invalid(attribute.name, reason)

    return validate


def _is_endpoint(value):
    return isinstance(value, str) and ":" in value


def _is_number(value):
    return not isinstance(value, bool) and isinstance(value, (int, float))


_endpoint = _check(_is_endpoint, "must be a Twisted endpoint description such as tcp:5250")
_text = _check(lambda v: isinstance(v, str) and bool(v.strip()), "must be a non-empty string")
_positive = _check(lambda v: _is_number(v) and v > 0, "must be a positive number")
_count = _check(lambda v: _is_number(v) and isinstance(v, int) and v >= 1,
                "must be a positive integer")
#: Seconds, where 0 turns the feature off.
_seconds_or_off = _check(lambda v: _is_number(v) and v >= 0,
                         "must be a positive number, or 0 for off")


def _endpoints(instance, attribute, value):
    if not (isinstance(value, tuple) and value):
        raise _Invalid(attribute.name, "must be a non-empty list of endpoint descriptions")
    for v in value:
        _endpoint(instance, attribute, v)


def _tuple(value):
    """One endpoint description or a list of them, as a tuple."""
    if isinstance(value, str):
        return (value,)
    return tuple(value) if isinstance(value, list) else value


def _zero_as_float(value):
    """0 (off) as ``0.0``, whatever number type it came as."""
    return 0.0 if _is_number(value) and value == 0 else value


_share = _check(lambda v: _is_number(v) and 0 <= v <= 1,
               "must be a number from 0 to 1 (a share of a cluster's nodes)")
_boolean = _check(lambda v: isinstance(v, bool), "must be true or false")
#: A file name, where "" means the documented default.
_path_or_default = _check(lambda v: isinstance(v, str), "must be a file name (or empty)")


@attrs.frozen
class RegionConfig:
    name: str = attrs.field(factory=socket.gethostname, validator=_text)
    database: str = attrs.field(default="dbname=powerctl", validator=_text)
    api_endpoint: str = attrs.field(default="tcp:5240:interface=127.0.0.1", validator=_endpoint)
    rpc_endpoint: str = attrs.field(default="tcp:5250:interface=127.0.0.1", validator=_endpoint)
    secret_file: str = attrs.field(default="/etc/powerctl/secret", validator=_text)
    heartbeat_timeout: float = attrs.field(default=30.0, validator=_positive)
    responsive_grace: float = attrs.field(default=60.0, validator=_positive)
    pod_probe_interval: float = attrs.field(default=60.0, validator=_positive)
    lease: float = attrs.field(default=30.0, validator=_positive)
    # A fence within this many seconds of a node's last successful fence, with
    # nothing switched on since, joins it without a hardware call (0: never).
    fence_reuse_seconds: float = attrs.field(default=60.0, converter=_zero_as_float,
                                             validator=_seconds_or_off)
    # Seconds the event journal (GET /v1/events) keeps an event (issue 14).
    event_retention: float = attrs.field(default=86400.0, validator=_positive)
    # /metrics without a token, only when an operator says so.
    metrics_public: bool = attrs.field(default=False, validator=_boolean)
    # The key that seals secrets at rest ("": powerctl.region.vault.DEFAULT_KEY_FILE,
    # created there only on a database without sealed secrets).
    key_file: str = attrs.field(default="", validator=_path_or_default)
    # Plain tcp: for pservs on a non-loopback interface only when this says so.
    allow_plaintext_rpc: bool = attrs.field(default=False, validator=_boolean)
    # How often the leader looks for nodes to fence automatically (seconds;
    # each cluster's policy says whether it does: powerctl cluster auto-fence).
    auto_fence_interval: float = attrs.field(default=10.0, validator=_positive)
    # Ended operations older than this many days leave the journal (0: never).
    journal_keep_days: float = attrs.field(default=90.0, converter=_zero_as_float,
                                           validator=_seconds_or_off)
    # A bulk off/soft-off/cycle selecting more than this share of a cluster's
    # nodes needs "confirm": true (powerctl.region.bulk).
    bulk_confirm_share: float = attrs.field(default=0.2, validator=_share)
    # Dispatches using the database at once (powerctl.region.core.Region):
    # more lets a storm of requests reach the pservs sooner, at the cost of
    # how long a pserv's heartbeat may wait behind them for its lease.
    dispatch_concurrency: int = attrs.field(default=4, validator=_count)
    # Mutual TLS: a directory of CA certificates (*.pem); pservs must show a
    # certificate one of them signed ("": none asked for).  Needs an ssl:
    # rpc_endpoint.
    rpc_client_ca: str = attrs.field(default="", validator=_path_or_default)


@attrs.frozen
class PservConfig:
    name: str = attrs.field(factory=socket.gethostname, validator=_text)
    cluster: str = attrs.field(default="default", validator=_text)
    regions: tuple = attrs.field(default=("tcp:host=127.0.0.1:port=5250",),
                                 converter=_tuple, validator=_endpoints)
    secret_file: str = attrs.field(default="/etc/powerctl/secret", validator=_text)
    poll_interval: float = attrs.field(default=60.0, validator=_positive)
    poll_concurrency: int = attrs.field(default=32, validator=_count)
    heartbeat_interval: float = attrs.field(default=5.0, validator=_positive)
    stagger_on: float = attrs.field(default=0.0, converter=_zero_as_float,
                                    validator=_seconds_or_off)
    max_actions: int = attrs.field(default=64, validator=_count)
    # Per BMC or PDU (its address:port), whatever the driver: sessions at
    # once and seconds between the starts of two calls (powerctl.drivers.bmclimit).
    bmc_max_sessions: int = attrs.field(default=8, validator=_count)
    bmc_min_interval: float = attrs.field(default=0.0, converter=_zero_as_float,
                                          validator=_seconds_or_off)
    manual_timeout: float = attrs.field(default=3600.0, converter=_zero_as_float,
                                        validator=_seconds_or_off)
    lease_margin: float = attrs.field(default=10.0, validator=_positive)
    # A per-cluster credential (powerctl admin pserv-credential create); "": secret_file.
    credential_file: str = attrs.field(default="", validator=_path_or_default)
    # Authentication failures per BMC account within the window before it is
    # no longer tried (no BMC lock-outs).
    auth_failure_limit: int = attrs.field(default=3, validator=_count)
    auth_failure_window: float = attrs.field(default=300.0, validator=_positive)
    # Dialling a non-loopback region in plain tcp: only when this says so.
    allow_plaintext_rpc: bool = attrs.field(default=False, validator=_boolean)


def build(cls, values, source):
    """
    Build ``cls`` from ``values`` (a dict): its fields' validators check
    each value; any refusal is a :class:`ConfigError` naming ``source``
    and the setting.
    """
    known = [f.name for f in attrs.fields(cls)]
    unknown = set(values) - set(known)
    if unknown:
        raise ConfigError(
            f"{source}: unknown setting(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(known)}"
        )
    try:
        return cls(**values)
    except _Invalid as e:
        raise ConfigError(f"{source}: {e.setting} {e.reason}") from None


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
