"""
``powerctl podm add|list|show|update|delete``: pod managers (shared PDUs,
chassis managers, Redfish services that control many nodes).

A password is read from ``--password-file`` (``-``: stdin) or an echo-less
prompt, never from the command line, and never printed: the API shows only
``password_set``, and :func:`powerctl.cli.redaction.without_password`
masks one should an answer carry it anyway.  A pod manager is named by its
UUID or, for convenience, by its name.
"""

import uuid as uuidlib

from powerctl.cli import EXIT_OK, UsageError
from powerctl.cli import output
from powerctl.cli.client import ApiError, add_command, add_group, api_command, q
from powerctl.cli.redaction import without_password

PODM_COLUMNS = [
    ("UUID", "uuid"),
    ("NAME", "name"),
    ("DRIVER", "driver"),
    ("URL", "url"),
    ("STATUS", "status"),
    ("USERNAME", "username"),
    ("PASSWORD", lambda p: None if p.get("password_set") is None
     else ("set" if p["password_set"] else "none")),
    ("DESCRIPTION", "description"),
]


def _podm_options(p):
    p.add_argument("--username", "-u")
    p.add_argument("--password-file", metavar="FILE",
                   help="read the password from FILE ('-': stdin); never on the command line")
    p.add_argument("--description")


def add_commands(subparsers, parent):
    """Register ``podm ...``; ``parent`` carries the API options."""
    podm = add_group(subparsers, "podm",
                     "pod managers (shared PDUs, chassis managers, Redfish services)")
    p = add_command(podm, "add", podm_add, "register a pod manager", parent)
    p.add_argument("name")
    p.add_argument("--url", required=True)
    _podm_options(p)
    p.add_argument("--driver", help="driver used to reach it (the API's default if omitted)")
    add_command(podm, "list", podm_list, "list pod managers", parent)
    add_command(podm, "show", podm_show, "one pod manager", parent).add_argument(
        "id", metavar="UUID|NAME")
    p = add_command(podm, "update", podm_update, "change a pod manager", parent)
    p.add_argument("id", metavar="UUID|NAME")
    p.add_argument("--name", dest="new_name", metavar="NAME", help="rename it")
    p.add_argument("--url")
    p.add_argument("--prompt-password", action="store_true",
                   help="ask for a new password (without echo)")
    _podm_options(p)
    add_command(podm, "delete", podm_delete, "forget a pod manager", parent).add_argument(
        "id", metavar="UUID|NAME")


def _read_password(ctx, args, prompt):
    """From ``--password-file`` or an echo-less prompt; None if neither."""
    if args.password_file:
        try:
            if args.password_file == "-":
                text = ctx.stdin.readline()
            else:
                with open(args.password_file, encoding="utf-8") as f:
                    text = f.readline()
        except OSError as e:
            raise UsageError(f"--password-file: cannot read it: {e.strerror}") from None
        return text.rstrip("\r\n")
    if prompt:
        if not ctx.isatty(ctx.stdin):
            raise UsageError("no terminal to ask for the password: use --password-file")
        try:
            return ctx.getpass("Password: ")
        except EOFError:
            raise UsageError("no password given") from None
    return None


def _podm_body(args, password):
    body = {k: getattr(args, k) for k in ("url", "username", "description", "driver")
            if getattr(args, k, None) is not None}
    if getattr(args, "new_name", None):
        body["name"] = args.new_name
    if password is not None:
        body["password"] = password
    return body


async def _podm_uuid(api, ident):
    """``ident`` itself when it is a UUID, else the pod manager of that name."""
    try:
        return str(uuidlib.UUID(ident))
    except ValueError:
        pass
    found, _ = await api.collect("/v1/pod_managers", keys=("pod_managers",))
    matches = [p for p in found if p.get("name") == ident]
    if not matches:
        raise ApiError(f"no pod manager named {ident!r}", "not_found", 404)
    return matches[0]["uuid"]


def _show_podm(ctx, args, doc):
    doc = without_password(doc)
    if args.json:
        ctx.out(output.to_json(doc))
    else:
        ctx.out(output.key_values((k, output.shown(k, v)) for k, v in (doc or {}).items()))


@api_command
async def podm_add(ctx, args, api):
    """``powerctl podm add NAME --url URL [--username U] [--password-file F]``."""
    password = _read_password(ctx, args, prompt=ctx.isatty(ctx.stdin))
    body = dict(_podm_body(args, password), name=args.name)
    _show_podm(ctx, args, await api.call("POST", "/v1/pod_managers", body))
    return EXIT_OK


@api_command
async def podm_list(ctx, args, api):
    """``powerctl podm list``."""
    found, _ = await api.collect("/v1/pod_managers", keys=("pod_managers",))
    managers = [without_password(p) for p in found]
    if args.json:
        ctx.out(output.to_json(managers))
    else:
        ctx.out(output.table(managers, PODM_COLUMNS))
    return EXIT_OK


@api_command
async def podm_show(ctx, args, api):
    """``powerctl podm show UUID|NAME``."""
    ident = await _podm_uuid(api, args.id)
    _show_podm(ctx, args, await api.call("GET", f"/v1/pod_manager/{q(ident)}"))
    return EXIT_OK


@api_command
async def podm_update(ctx, args, api):
    """``powerctl podm update UUID|NAME [...]``: sends only what is given."""
    password = _read_password(ctx, args, prompt=args.prompt_password)
    body = _podm_body(args, password)
    if not body:
        raise UsageError("nothing to update")
    ident = await _podm_uuid(api, args.id)
    _show_podm(ctx, args, await api.call("PUT", f"/v1/pod_manager/{q(ident)}", body))
    return EXIT_OK


@api_command
async def podm_delete(ctx, args, api):
    """``powerctl podm delete UUID|NAME``."""
    ident = await _podm_uuid(api, args.id)
    doc = await api.call("DELETE", f"/v1/pod_manager/{q(ident)}")
    if args.json:
        ctx.out(output.to_json(doc if doc is not None else {"deleted": ident}))
    else:
        ctx.out(f"deleted pod manager {ident}")
    return EXIT_OK
