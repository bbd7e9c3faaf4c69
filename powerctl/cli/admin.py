"""
Security commands (issue 10).

``powerctl admin token create|list|revoke (--database DSN | --config REGION.toml)``
    API tokens straight in the database, without a running API: how the
    first admin token is made.  ``create`` prints the new token as the last
    line of its output, once; the database keeps only its hash.
``powerctl token create|list|revoke``
    The same through the API (``/v1/tokens``; an admin token).
``powerctl audit``
    The audit trail (``/v1/audit``), newest first, paged with ``--before``.
``powerctl admin key init FILE``
    A new key file for secrets at rest (mode 0600).
``powerctl admin key add FILE`` then ``powerctl admin key rotate --key-file FILE ...``
    Rotation without downtime: ``add`` puts a new key first in the file
    (the old one stays readable); a running region reads the changed file
    at once (no restart); once every region's copy holds it, ``rotate``
    re-encrypts every secret under the new key, row by row while requests
    go on, and drops the old key from the file.
"""

import os

import attrs

from powerctl.cli import EXIT_OK, CliError, UsageError
from powerctl.cli import output


# -- straight to the database -------------------------------------------

def _dsn(args):
    if args.database:
        return args.database
    from powerctl import config

    try:
        return config.load(config.RegionConfig, args.config, "region").database
    except config.ConfigError as e:
        raise UsageError(str(e)) from None


def _connect(args):
    """A psycopg2 connection to the region's database, migrated."""
    import psycopg2

    from powerctl.region import schema

    dsn = _dsn(args)
    try:
        conn = psycopg2.connect(dsn)
    except psycopg2.Error as e:
        raise CliError(f"cannot connect to the database: {str(e).strip()}",
                       "unreachable") from None
    schema.migrate_sync(conn)
    return conn


def _clusters(args):
    return sorted(set(args.cluster)) if args.cluster else None


def _scope(clusters):
    return ", ".join(clusters) if clusters else "every cluster"


async def admin_token_create(ctx, args):
    """``powerctl admin token create --name N --role R [--cluster C]...``."""
    from powerctl.region.errors import StoreError
    from powerctl.region.tokens import create_token_sync

    conn = _connect(args)
    try:
        row, token = create_token_sync(conn, args.name, args.role, _clusters(args),
                                       created_by="powerctl admin")
    except StoreError as e:
        raise CliError(str(e), "config" if e.code == "invalid_input" else "error") from None
    finally:
        conn.close()
    ctx.out(f"created token {row['id']} {row['name']!r}: role {row['role']}, "
            f"{_scope(row['clusters'])}")
    ctx.out("it is shown only now; keep it secret (e.g. export POWERCTL_TOKEN=...):")
    ctx.out(token)
    return EXIT_OK


_TOKEN_COLUMNS = [("ID", "id"), ("NAME", "name"), ("ROLE", "role"),
                  ("CLUSTERS", lambda t: _scope(t.get("clusters"))),
                  ("CREATED", lambda t: output.when(t.get("created_at"))),
                  ("BY", "created_by"),
                  ("REVOKED", lambda t: output.when(t.get("revoked_at")) or "")]


async def admin_token_list(ctx, args):
    conn = _connect(args)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id, name, role, clusters, created_at, created_by, revoked_at "
                        "FROM api_tokens ORDER BY id")
            columns = [c.name for c in cur.description]
            rows = [dict(zip(columns, r)) for r in cur.fetchall()]
    finally:
        conn.close()
    for row in rows:
        for key in ("created_at", "revoked_at"):
            row[key] = row[key].isoformat() if row[key] else None
    ctx.out(output.to_json(rows) if args.json else output.table(rows, _TOKEN_COLUMNS))
    return EXIT_OK


async def admin_token_revoke(ctx, args):
    conn = _connect(args)
    try:
        with conn.cursor() as cur:
            cur.execute("UPDATE api_tokens SET revoked_at = now(), revoked_by = %s "
                        "WHERE name = %s AND revoked_at IS NULL RETURNING id",
                        ("powerctl admin", args.name))
            revoked = [r[0] for r in cur.fetchall()]
        conn.commit()
    finally:
        conn.close()
    if not revoked:
        raise CliError(f"no live token named {args.name!r}", "not_found")
    ctx.out(f"revoked token {revoked[0]} {args.name!r}")
    return EXIT_OK


async def admin_key_init(ctx, args):
    from powerctl.region import vault

    if os.path.exists(args.file):
        raise UsageError(f"{args.file} exists; refusing to overwrite a key")
    try:
        vault.create_key_file(args.file)
    except OSError as e:
        raise CliError(f"{args.file}: {e.strerror}", "config") from None
    ctx.out(f"created key file {args.file} (mode 0600); give every region of the database "
            "a copy (key_file) and keep a backup: without it the secrets are lost")
    return EXIT_OK


async def admin_key_add(ctx, args):
    from powerctl.region import vault

    try:
        keys = vault.add_key(args.file).keys
    except vault.VaultError as e:
        raise CliError(str(e), "config") from None
    ctx.out(f"{args.file} now holds {len(keys)} keys, the new one first; running regions "
            "read it at once (copy it to every region's host), then run: powerctl admin key "
            "rotate --key-file " + args.file)
    return EXIT_OK


async def admin_key_rotate(ctx, args):
    from powerctl.drivers.standard import standard_schemas
    from powerctl.region import vault

    try:
        box = vault.load_key_file(args.key_file)
    except vault.VaultError as e:
        raise CliError(str(e), "config") from None
    conn = _connect(args)
    try:
        vault.check_opens(conn, box)
        changed = vault.seal_existing(conn, box, _SchemaCatalogue(standard_schemas()),
                                      reseal=True)
    except vault.VaultError as e:
        raise CliError(str(e), "config") from None
    finally:
        conn.close()
    if len(box.keys) > 1:
        vault.drop_old_keys(args.key_file)
    ctx.out(f"re-encrypted the secrets of {changed} row(s) with the first key of "
            f"{args.key_file}; the older keys are dropped from it")
    return EXIT_OK


@attrs.frozen
class _SchemaEntry:
    schema: object


@attrs.frozen
class _SchemaCatalogue:
    """Just enough of a driver catalogue to say which parameters are secret."""

    schemas: dict

    def get(self, driver):
        from powerctl.drivers.errors import DriverSettingsError

        if driver not in self.schemas:
            raise DriverSettingsError(f"unknown driver {driver!r}")
        return _SchemaEntry(self.schemas[driver])


def _vault_of(args):
    """The region's vault: ``--key-file``, else the config's ``key_file``, else the default."""
    from powerctl import config
    from powerctl.region import vault

    path = args.key_file
    if path is None and args.config:
        try:
            path = config.load(config.RegionConfig, args.config, "region").key_file or None
        except config.ConfigError as e:
            raise UsageError(str(e)) from None
    path = path or vault.DEFAULT_KEY_FILE
    try:
        return vault.load_key_file(path)
    except vault.VaultError as e:
        raise CliError(f"{e} (the region's key file, --key-file)", "config") from None


async def pserv_credential_create(ctx, args):
    """Prints the credential file's content: ``... > rack1.credential`` (then chmod 600)."""
    from powerctl.region import pservcreds

    if not tokens_name_ok(args.cluster):
        raise UsageError(f"--cluster {args.cluster!r} is not a cluster name")
    box = _vault_of(args)
    conn = _connect(args)
    try:
        credential = pservcreds.create_sync(conn, box, args.cluster)
    finally:
        conn.close()
    ctx.err(f"created pserv credential {credential.id} for cluster {args.cluster}; "
            "store it in a file only the pserv's user can read (mode 0600) and give it "
            "as credential_file (--credential-file)")
    ctx.stdout.write(credential.text())
    ctx.stdout.flush()
    return EXIT_OK


def tokens_name_ok(name):
    import re

    return bool(re.match(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,252}$", name or ""))


async def pserv_credential_list(ctx, args):
    from powerctl.region import pservcreds

    conn = _connect(args)
    try:
        rows = pservcreds.list_sync(conn)
    finally:
        conn.close()
    for row in rows:
        for key in ("created_at", "revoked_at"):
            row[key] = row[key].isoformat() if row[key] else None
    ctx.out(output.to_json(rows) if args.json else output.table(rows, [
        ("ID", "id"), ("CLUSTER", "cluster"),
        ("CREATED", lambda r: output.when(r.get("created_at"))), ("BY", "created_by"),
        ("REVOKED", lambda r: output.when(r.get("revoked_at")) or "")]))
    return EXIT_OK


async def pserv_credential_revoke(ctx, args):
    from powerctl.region import pservcreds

    conn = _connect(args)
    try:
        found = pservcreds.revoke_sync(conn, args.id)
    finally:
        conn.close()
    if not found:
        raise CliError(f"no live pserv credential {args.id!r}", "not_found")
    ctx.out(f"revoked pserv credential {args.id}; its pservs are disconnected at their "
            "next heartbeat")
    return EXIT_OK


async def admin_tls_init(ctx, args):
    from powerctl import tlsinit

    names = args.name or ["localhost"]
    try:
        paths = tlsinit.init(args.directory, names)
    except FileExistsError:
        raise UsageError(f"{args.directory} exists; refusing to overwrite it") from None
    except (OSError, ValueError) as e:
        raise CliError(f"{args.directory}: {e}", "config") from None
    listen, dial, client_ca = tlsinit.endpoints(paths, args.port, names[0])
    ctx.err(f"made a CA ({paths['ca']}, key {paths['ca_key']}: keep it offline), a "
            f"certificate for the region's names {', '.join(names)} and one for the pservs "
            "(mutual TLS); use:")
    ctx.out(f"rpc_endpoint {listen}")
    ctx.out(f"rpc_client_ca {client_ca}")
    ctx.out(f"regions {dial}")
    return EXIT_OK


# -- through the API ------------------------------------------------------

def _api_commands():
    from powerctl.cli.client import api_command, q

    @api_command
    async def token_create(ctx, args, api):
        doc = await api.call("POST", "/v1/tokens", {"name": args.name, "role": args.role,
                                                    "clusters": _clusters(args)})
        if args.json:
            ctx.out(output.to_json(doc))
            return EXIT_OK
        ctx.out(f"created token {doc['id']} {doc['name']!r}: role {doc['role']}, "
                f"{_scope(doc.get('clusters'))}")
        ctx.out("it is shown only now; keep it secret:")
        ctx.out(doc["token"])
        return EXIT_OK

    @api_command
    async def token_list(ctx, args, api):
        doc, _ = await api.collect("/v1/tokens",
                                   {"revoked": "true" if args.revoked else None})
        ctx.out(output.to_json(doc) if args.json else output.table(doc, _TOKEN_COLUMNS))
        return EXIT_OK

    @api_command
    async def token_revoke(ctx, args, api):
        doc = await api.call("DELETE", f"/v1/tokens/{q(args.id)}")
        ctx.out(output.to_json(doc) if args.json else
                f"revoked token {doc['id']} {doc['name']!r}")
        return EXIT_OK

    @api_command
    async def audit(ctx, args, api):
        if args.limit is not None and args.limit < 1:
            raise UsageError("--limit: must be at least 1")
        doc, more = await api.collect("/v1/audit", {"before": args.before, "actor": args.actor},
                                      most=None if args.all else (args.limit or 100))
        if args.json:
            ctx.out(output.to_json(doc))
            return EXIT_OK
        ctx.out(output.table(doc, [
            ("ID", "id"), ("WHEN", lambda a: output.when(a.get("at"))), ("WHO", "actor"),
            ("FROM", "source"), ("METHOD", "method"), ("PATH", "path"),
            ("STATUS", "status"), ("OUTCOME", "outcome")]))
        if more:
            ctx.err(f"older entries: powerctl audit --before {doc[-1]['id']} (or --limit N, "
                    "--all)")
        return EXIT_OK

    return token_create, token_list, token_revoke, audit


def add_commands(subparsers):
    """Register ``admin``, ``token`` and ``audit``."""
    from powerctl.cli.client import add_group as group, api_options as _api_options
    from powerctl.region.auth import ROLES

    def database_options(p):
        where = p.add_mutually_exclusive_group(required=True)
        where.add_argument("--database", metavar="DSN", help="the region's PostgreSQL DSN")
        where.add_argument("--config", metavar="REGION.toml",
                           help="read the DSN from the region's configuration file")

    admin = group(subparsers, "admin", "administration straight on the region's database")
    tokens = group(admin, "token", "API tokens (bootstrap: no API needed)")
    p = tokens.add_parser("create", help="create a token; prints it last, once")
    p.add_argument("--name", required=True)
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--cluster", action="append", metavar="C",
                   help="confine it to this cluster (repeat for several)")
    database_options(p)
    p.set_defaults(func=admin_token_create)
    p = tokens.add_parser("list", help="tokens, without their secrets")
    p.add_argument("--json", action="store_true")
    database_options(p)
    p.set_defaults(func=admin_token_list)
    p = tokens.add_parser("revoke", help="revoke the live token of that name")
    p.add_argument("name")
    database_options(p)
    p.set_defaults(func=admin_token_revoke)

    keys = group(admin, "key", "the key that encrypts secrets at rest")
    p = keys.add_parser("init", help="create a new key file (mode 0600)")
    p.add_argument("file")
    p.set_defaults(func=admin_key_init)
    p = keys.add_parser("add", help="rotation, step 1: put a new key first in the file")
    p.add_argument("file")
    p.set_defaults(func=admin_key_add)
    p = keys.add_parser("rotate", help="rotation, step 2: re-encrypt every secret with the "
                        "file's first key and drop the others")
    p.add_argument("--key-file", required=True, metavar="FILE")
    database_options(p)
    p.set_defaults(func=admin_key_rotate)

    tls = group(admin, "tls", "certificates for AMP over TLS between hosts")
    p = tls.add_parser("init", help="a small CA, a region and a pserv certificate in DIR")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--name", action="append", metavar="NAME",
                   help="a name (or address) pservs dial the region by; repeat "
                        "(default localhost)")
    p.add_argument("--port", type=int, default=5250, help="the region's RPC port (5250)")
    p.set_defaults(func=admin_tls_init)

    creds = group(admin, "pserv-credential", "per-cluster pserv credentials")
    p = creds.add_parser("create", help="a credential admitting pservs to one cluster "
                         "(printed on stdout: redirect it to a file)")
    p.add_argument("--cluster", required=True)
    p.add_argument("--key-file", metavar="FILE", default=None,
                   help="the region's key file (default: the config's key_file, else "
                        "/var/lib/powerctl/secrets.key)")
    database_options(p)
    p.set_defaults(func=pserv_credential_create)
    p = creds.add_parser("list", help="credentials, without their secrets")
    p.add_argument("--json", action="store_true")
    database_options(p)
    p.set_defaults(func=pserv_credential_list)
    p = creds.add_parser("revoke", help="revoke a credential (its pservs are disconnected)")
    p.add_argument("id")
    database_options(p)
    p.set_defaults(func=pserv_credential_revoke)

    token_create, token_list, token_revoke, audit = _api_commands()
    parent = _api_options()
    api_tokens = group(subparsers, "token", "API tokens through the API (admin)")
    p = api_tokens.add_parser("create", parents=[parent], help="create a token")
    p.add_argument("--name", required=True)
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--cluster", action="append", metavar="C")
    p.set_defaults(func=token_create)
    p = api_tokens.add_parser("list", parents=[parent], help="tokens, without secrets")
    p.add_argument("--revoked", action="store_true", help="revoked ones too")
    p.set_defaults(func=token_list)
    p = api_tokens.add_parser("revoke", parents=[parent], help="revoke a token by id")
    p.add_argument("id")
    p.set_defaults(func=token_revoke)

    p = subparsers.add_parser("audit", parents=[parent], help="the audit trail, newest first")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="at most N entries, following the API's pages (default 100)")
    p.add_argument("--all", action="store_true", help="the whole trail (every page)")
    p.add_argument("--before", type=int, default=None, metavar="ID")
    p.add_argument("--actor", default=None, metavar="NAME")
    p.set_defaults(func=audit)
