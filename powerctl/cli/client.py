"""
Talking to the region API: where it is, the JSON client, the command wrapper.

Every REST command (:mod:`powerctl.cli.rest`) is an ``async fn(ctx, args,
api)`` wrapped by :func:`api_command`, which builds one :class:`Api` from
``--api``/``$POWERCTL_API`` and ``--api-timeout`` and closes it afterwards.
The options themselves (:func:`api_options`) are declared here too, so the
one place that reads them is the one that defines them.

An API error (``{"error": {"code", "message"}}``) becomes an
:class:`ApiError` whose exit status is 2 for 400/422 (bad input: nothing was
written), 3 for 401/403, 1 for any other HTTP status; without an answer,
4 (unreachable), 5 (timeout) or 6 (an answer that is not JSON).
"""

import argparse
import getpass
import json
import re
import urllib.parse

import treq
from twisted.internet import defer, error as neterror, task
from twisted.web import client

from powerctl.cli import EXIT_FAILURE, CliError, Interrupted, UsageError, exit_status
from powerctl.cli import credentials
from powerctl.cli.driver import positive_float

DEFAULT_API = "http://127.0.0.1:5240"
DEFAULT_API_TIMEOUT = 30.0

#: Prefix of the options given before the command (``powerctl --api URL
#: node list``), until :func:`apply_global_options` folds them in.
_GLOBAL = "global_"


class ApiError(CliError):
    """A request failed; ``http_status`` is the HTTP status when there was one."""

    def __init__(self, message, kind, http_status=None):
        super().__init__(message, kind)
        self.http_status = http_status

    @property
    def status(self):
        code = self.http_status
        if code in (400, 422):
            return exit_status("config")
        if code in (401, 403):
            return exit_status("auth")
        if code is not None:
            return EXIT_FAILURE
        return exit_status(self.kind)


def _message_of(doc, code):
    """``(kind, message)`` of an error answer, whatever its shape."""
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict):
        return str(error.get("code") or f"http {code}"), str(error.get("message") or "")
    if isinstance(error, str):
        return f"http {code}", error
    return f"http {code}", "the API refused the request"


def _reason(e):
    """Why a connection failed, in a few words."""
    if isinstance(e, client.ResponseFailed):
        return "; ".join(str(r.value) for r in e.reasons) or "connection lost"
    if isinstance(e, neterror.ConnectionRefusedError):
        return "connection refused"
    return str(e) or type(e).__name__


class Api:
    """
    A small JSON client of the region API.  Every request is bounded by
    ``timeout`` and cancelled on Ctrl-C.

    ``ctx.agent``, when set, is the ``IAgent`` every request goes through
    (the tests serve the real API resource in memory that way); otherwise
    the client has its own connection pool, closed by :meth:`close` so that
    nothing outlives the command.
    """

    def __init__(self, ctx, base, timeout, token_file=None):
        self.ctx = ctx
        self.base = base.rstrip("/")
        self.timeout = timeout
        self.token_file = token_file  # --token-file: beats $POWERCTL_TOKEN and its file
        self.pool = None
        agent = getattr(ctx, "agent", None)
        if agent is None:
            self.pool = client.HTTPConnectionPool(ctx.reactor, persistent=True)
            agent = client.Agent(ctx.reactor, pool=self.pool, connectTimeout=timeout)
        self.http = treq.client.HTTPClient(agent)

    def close(self):
        """A Deferred firing once our cached connections are closed."""
        if self.pool is None:
            return defer.succeed(None)
        return self.pool.closeCachedConnections()

    async def call(self, method, path, body=None, query=None):
        """The decoded JSON answer (None for an empty one); ApiError if not 2xx."""
        _, doc = await self._call(method, path, body, query)
        return doc

    async def collect(self, path, query=None, most=None, keys=()):
        """
        The items of a paged list (``GET``), following its ``Link: rel="next"``
        cursors: every item, or the first ``most``.  ``(items, more)``:
        ``more`` says whether the list goes on past what was collected.
        """
        query = {k: v for k, v in (query or {}).items() if v is not None}
        found = []
        while True:
            size = MAX_PAGE if most is None else max(1, min(MAX_PAGE, most - len(found)))
            response, doc = await self._call("GET", path, None, dict(query, limit=size))
            found.extend(items(doc, *keys))
            cursor = next_cursor(response.headers.getRawHeaders("link") or ())
            if cursor is None:
                return found, False
            if most is not None and len(found) >= most:
                return found[:most], True
            query["after"] = cursor

    async def _call(self, method, path, body=None, query=None):
        """``(response, decoded JSON answer)``; ApiError if not 2xx."""
        url = self.base + path
        kwargs = {"headers": {"Accept": ["application/json"],
                              **credentials.auth_headers(self.ctx.env,
                                                         token_file=self.token_file)}}
        if body is not None:
            kwargs["json"] = body
        if query:
            kwargs["params"] = {k: v for k, v in query.items() if v is not None}

        async def exchange():
            response = await self.http.request(method, url, **kwargs)
            return response, await treq.content(response)

        d = defer.ensureDeferred(exchange())
        remove = self.ctx.on_interrupt(d.cancel)
        d.addTimeout(self.timeout, self.ctx.reactor)
        try:
            response, content = await d
        except defer.TimeoutError:
            raise ApiError(f"{method} {url}: no answer within {self.timeout:g}s",
                           "timeout") from None
        except defer.CancelledError:
            if self.ctx.interrupted:
                raise Interrupted() from None
            raise
        except (neterror.ConnectError, neterror.DNSLookupError,
                client.ResponseFailed, neterror.ConnectionLost) as e:
            raise ApiError(f"cannot reach the API at {self.base}: "
                           f"{_reason(e)}", "unreachable") from None
        finally:
            remove()
        doc = None
        if content.strip():
            try:
                doc = json.loads(content)
            except ValueError:
                if response.code < 400:
                    raise ApiError(f"{method} {url}: answer is not JSON "
                                   f"(HTTP {response.code})", "protocol") from None
        if response.code >= 400:
            code, message = _message_of(doc, response.code)
            raise ApiError(message, code, response.code)
        return response, doc

    async def sleep(self, seconds):
        """Wait ``seconds`` on the command's reactor; Interrupted on Ctrl-C."""
        d = task.deferLater(self.ctx.reactor, seconds, lambda: None)
        remove = self.ctx.on_interrupt(d.cancel)
        try:
            await d
        except defer.CancelledError:
            raise Interrupted() from None
        finally:
            remove()


#: Items per page the CLI asks for when it follows cursors (the API's maximum).
MAX_PAGE = 1000
_NEXT = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?')


def next_cursor(links):
    """The ``after`` cursor of a ``Link: <...>; rel="next"`` header, or None."""
    for value in links:
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        for target in _NEXT.findall(text):
            after = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query).get("after")
            if after:
                return after[0]
    return None


def q(value):
    """One path segment, quoted."""
    return urllib.parse.quote(str(value), safe="")


def items(doc, *keys):
    """A list from a list answer, bare (``[...]``) or wrapped (``{"nodes": [...]}``)."""
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict):
        for key in keys + ("items", "results", "data"):
            if isinstance(doc.get(key), list):
                return doc[key]
    raise ApiError("unexpected answer from the API (expected a list)", "protocol")


def requester():
    """Who asks, for the journal: ``cli:<login>`` (``cli`` if unknown)."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no login name in some containers: the journal says "cli"
        return "cli"


def api_command(fn):
    """
    Wrap ``fn(ctx, args, api)`` into a command: build the client from
    ``--api``/``$POWERCTL_API`` and close its connections afterwards.
    """

    async def command(ctx, args):
        base = args.api or ctx.env.get("POWERCTL_API") or DEFAULT_API
        parts = urllib.parse.urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"--api {base!r} is not an http(s) URL")
        timeout = DEFAULT_API_TIMEOUT if args.api_timeout is None else args.api_timeout
        api = Api(ctx, base, timeout, token_file=getattr(args, "token_file", None))
        try:
            return await fn(ctx, args, api)
        finally:
            await api.close()

    command.__doc__ = fn.__doc__
    return command


# -- the options that say where the API is ----------------------------------

def api_options(parent=None, prefix=""):
    """
    The options every REST command takes (an argparse parent parser); given
    ``parent`` (the top-level parser) they go there instead, stored under
    ``prefix`` + their name, for :func:`apply_global_options`.
    """
    parent = argparse.ArgumentParser(add_help=False) if parent is None else parent
    group = parent.add_argument_group(
        "region API" + (" (REST commands; also accepted after the command, which wins)"
                        if prefix else ""))
    group.add_argument("--api", dest=prefix + "api", metavar="URL", default=None,
                       help=f"region API (default $POWERCTL_API or {DEFAULT_API})")
    group.add_argument("--api-timeout", dest=prefix + "api_timeout", type=positive_float,
                       default=None, metavar="S",
                       help=f"bound on each API request, seconds (default "
                            f"{DEFAULT_API_TIMEOUT:g})")
    group.add_argument("--json", dest=prefix + "json", action="store_true",
                       help="print the API's JSON instead of a table")
    group.add_argument("--token-file", dest=prefix + "token_file", metavar="FILE",
                       default=None,
                       help="read the API token from FILE (mode 0600; beats "
                            "$POWERCTL_TOKEN and $POWERCTL_TOKEN_FILE)")
    return parent


def add_global_options(parser):
    """``--api``, ``--api-timeout``, ``--json``, ``--token-file`` before the command too
    (``powerctl --api URL node list``)."""
    api_options(parser, _GLOBAL)


def apply_global_options(args):
    """
    Fold the options given before the command into ``args`` (the same
    option given after the command wins; ``$POWERCTL_API`` still only
    fills in a missing ``--api``).  An error message when the command does
    not take one of them, else None.
    """
    for name in ("api", "api_timeout", "json", "token_file"):
        value = vars(args).pop(_GLOBAL + name, None)
        if value is None or value is False:
            continue
        if not hasattr(args, name):
            option = "--" + name.replace("_", "-")
            return f"{option} does not apply to 'powerctl {args.command}'"
        if name == "json":
            args.json = True
        elif getattr(args, name) is None:
            setattr(args, name, value)
    return None


def add_group(subparsers, name, help):
    """A command group (``node``, ``ops``, ...): its sub-command parsers."""
    p = subparsers.add_parser(name, help=help)
    sub = p.add_subparsers(dest=f"{name}_command", metavar="COMMAND")
    sub.required = True
    return sub


def add_command(sub, name, func, help, parent):
    """One REST sub-command running ``func``, with the API options of ``parent``."""
    p = sub.add_parser(name, help=help, parents=[parent])
    p.set_defaults(func=func)
    return p
