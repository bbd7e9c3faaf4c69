"""
The region service's security wiring (issue 10), kept out of
:mod:`powerctl.region.service` so that it stays a few hooks: the API guard
over the region's pool, and the door in front of the status page and
``/metrics``.
"""

from powerctl.region import guard as _guard
from powerctl.region.tokens import TokenStore


def api_guard(pool, reactor, log=None):
    """The :class:`~powerctl.region.guard.ApiGuard` of a region."""
    return _guard.ApiGuard(TokenStore(pool, clock=reactor), reactor, log=log)


def notified(guard, payload):
    """A ``tokens`` notification: a token was revoked (by any region)."""
    if guard is not None:  # None: the API is not up yet, so nothing is cached
        guard.tokens.notified(payload)


def protect_web(root, guard, settings):
    """Tokens for the status page and ``/metrics`` (unless ``metrics_public``)."""
    return _guard.protect_web(root, guard,
                              metrics_public=getattr(settings, "metrics_public", False))


def _open_vault_sync(settings, catalogue):
    """The region's vault, after sealing whatever is still plain; (vault, notes)."""
    import os

    import psycopg2

    from powerctl.region import vault as vaults

    notes = []
    path = getattr(settings, "key_file", "") or vaults.DEFAULT_KEY_FILE
    conn = psycopg2.connect(settings.database)
    try:
        if os.path.exists(path):
            vault = vaults.load_key_file(path)
        elif vaults.sealed_secrets_exist(conn):
            raise vaults.VaultError(
                f"key file {path} does not exist, but the database holds secrets encrypted "
                "with a key: start the region with the key file every region of this "
                "database uses (key_file, --key-file)")
        elif getattr(settings, "key_file", ""):
            raise vaults.VaultError(
                f"key file {path} does not exist; create it with: powerctl admin key init "
                f"{path} (and give every region of this database the same file)")
        else:
            vault = vaults.create_key_file(path)
            notes.append(f"created a new key for secrets at rest in {path} (mode 0600); "
                         "every region of this database needs a copy of it")
        vaults.check_opens(conn, vault)
        # issue 10: key add/rotate take effect without a restart
        vault = vaults.FileVault(path, vault)
        sealed = vaults.seal_existing(conn, vault, catalogue)
        if sealed:
            notes.append(f"encrypted the secrets of {sealed} stored row(s) still in plain text")
    finally:
        conn.close()
    return vault, notes


async def open_vault(settings, catalogue, log):
    """
    The :class:`~powerctl.region.vault.Vault` of a starting region: the key
    file of ``settings.key_file`` (refused if others may read it), else the
    default one, created only while no secret in the database is sealed.
    Plain secrets left by an older version are sealed now (the data
    migration).  Raises VaultError, naming the file, when it cannot.
    """
    from twisted.internet import threads

    vault, notes = await threads.deferToThread(_open_vault_sync, settings, catalogue)
    for note in notes:
        log.info("{note}", note=note)
    return vault


def pserv_credentials(region, pool, vault, log):
    """Per-cluster pserv credentials for ``region``; a warning about the shared secret."""
    from powerctl.region.pservcreds import PservCredentials

    region.pserv_credentials = PservCredentials(pool, vault)
    log.warn("the shared secret (secret_file) admits a pserv to every cluster, with their "
             "BMC passwords; give each cluster's pservs their own credential (powerctl admin "
             "pserv-credential create) on a site with several tenants")


def check_rpc_endpoint(settings):
    """Refuse plain AMP beyond loopback unless ``allow_plaintext_rpc`` (ConfigError)."""
    from powerctl.rpc.transport import check_server

    check_server(settings)
