"""
twistd options of the ``powerctl-region`` and ``powerctl-pserv`` daemons.

The service makers themselves are the plugin file's
(``twisted/plugins/powerctl_plugins.py``, one ``IServiceMaker`` per daemon);
this module holds what they parse: ``--config FILE`` and the per-setting
overrides, turned into ``options["settings"]``.

Both daemons run on the asyncio reactor (pysnmp needs it).  twistd installs
its default reactor only when the daemon starts, after option parsing, so
installing the asyncio reactor while parsing our options makes it the one
twistd uses -- the user need not pass ``--reactor=asyncio``.
"""

from twisted.python import usage

from powerctl import config, reactor as reactor_choice


class _Options(usage.Options):
    """Common handling: ``--config FILE`` plus per-setting overrides."""

    section = None
    config_class = None
    optParameters = [["config", "c", None, "TOML configuration file."]]

    def overrides(self):
        return {}

    def postOptions(self):
        try:
            self["settings"] = config.load(
                self.config_class, self["config"], self.section, self.overrides())
        except config.ConfigError as e:
            raise usage.UsageError(str(e))
        reactor_choice.install()


class RegionOptions(_Options):
    section = "region"
    config_class = config.RegionConfig
    optParameters = _Options.optParameters + [
        ["name", None, None, "Name of this region process."],
        ["database", None, None, "libpq connection string (DSN)."],
        ["api-endpoint", None, None, "Endpoint of the REST API, e.g. tcp:5240:interface=127.0.0.1"],
        ["rpc-endpoint", None, None, "Endpoint for pservs (AMP), e.g. tcp:5250:interface=127.0.0.1"],
        ["secret-file", None, None, "File holding the shared secret."],
        ["key-file", None, None, "File holding the key that encrypts secrets at rest."],
        ["rpc-client-ca", None, None,
         "Directory of CA certificates (*.pem) that must sign the pservs' certificates."],
    ]
    optFlags = [["allow-plaintext-rpc", None,
                 "Accept a plain tcp: RPC endpoint beyond loopback (BMC passwords in clear)."]]

    def overrides(self):
        return {
            "name": self["name"], "database": self["database"],
            "api_endpoint": self["api-endpoint"], "rpc_endpoint": self["rpc-endpoint"],
            "secret_file": self["secret-file"], "key_file": self["key-file"],
            "rpc_client_ca": self["rpc-client-ca"],
            "allow_plaintext_rpc": True if self["allow-plaintext-rpc"] else None,
        }


class PservOptions(_Options):
    section = "pserv"
    config_class = config.PservConfig
    optParameters = _Options.optParameters + [
        ["name", None, None, "Name of this pserv."],
        ["cluster", None, None, "Cluster this pserv serves."],
        ["secret-file", None, None, "File holding the shared secret."],
        ["credential-file", None, None, "File holding this cluster's pserv credential."],
    ]
    optFlags = [["allow-plaintext-rpc", None,
                 "Dial a non-loopback region in plain tcp: (BMC passwords in clear)."]]

    def __init__(self):
        super().__init__()
        self["region"] = []

    def opt_region(self, endpoint):
        """Region AMP endpoint, e.g. tcp:host=127.0.0.1:port=5250 (repeatable)."""
        self["region"].append(endpoint)

    def overrides(self):
        return {
            "name": self["name"], "cluster": self["cluster"],
            "secret_file": self["secret-file"], "regions": self["region"] or None,
            "credential_file": self["credential-file"],
            "allow_plaintext_rpc": True if self["allow-plaintext-rpc"] else None,
        }


def _fail(daemon, reason):
    """
    Stop twistd before it starts anything, with one line and exit status 1.
    twistd calls the service makers before it runs the reactor (and before
    it daemonises), so the line reaches the terminal or the unit's journal,
    and a supervisor sees the failure instead of a daemon that lingers.
    """
    raise SystemExit(f"{daemon}: cannot start: {reason}")


def check_endpoints(settings):
    """ConfigError unless the region's endpoints parse (they are only listened on later)."""
    from twisted.internet import endpoints, reactor

    for key in ("api_endpoint", "rpc_endpoint"):
        description = getattr(settings, key)
        try:
            endpoints.serverFromString(reactor, description)
        except ValueError as e:
            raise config.ConfigError(f"{key} {description!r} is not an endpoint "
                                     f"(e.g. tcp:5240:interface=127.0.0.1): {e}") from None


def make_region_service(options):
    from powerctl.region.service import DatabaseUnreachable, RegionService, check_database

    from powerctl.region import security

    settings = options["settings"]
    try:
        region = RegionService.from_config(settings)
        check_endpoints(settings)  # settings first, before the database
        security.check_rpc_endpoint(settings)
        check_database(settings.database)
    except (config.ConfigError, DatabaseUnreachable) as e:
        _fail("powerctl-region", e)
    return region


def make_pserv_service(options):
    from powerctl.pserv.service import PservService

    try:
        return PservService.from_config(options["settings"])
    except config.ConfigError as e:
        _fail("powerctl-pserv", e)

