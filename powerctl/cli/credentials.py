"""
The API token the CLI sends (issue 10): the file of ``--token-file``, else
``$POWERCTL_TOKEN``, else the file
``$POWERCTL_TOKEN_FILE``, else ``$XDG_CONFIG_HOME/powerctl/token`` (by
default ``~/.config/powerctl/token``) when it exists.  A token file that
other users could read is refused, as ssh refuses such a key: the token is
a password.
"""

import os
import stat

from powerctl.cli import UsageError

TOKEN_ENV = "POWERCTL_TOKEN"
TOKEN_FILE_ENV = "POWERCTL_TOKEN_FILE"


def token_file(env):
    """Where the token file is looked for (None when no home is known)."""
    if env.get(TOKEN_FILE_ENV):
        return env[TOKEN_FILE_ENV]
    base = env.get("XDG_CONFIG_HOME") or (
        os.path.join(env["HOME"], ".config") if env.get("HOME") else None)
    return os.path.join(base, "powerctl", "token") if base else None


def read_private(path, what="token file"):
    """A secret file's stripped text; UsageError if others may read it."""
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise UsageError(
                    f"{what} {path} is accessible by other users (mode "
                    f"{stat.S_IMODE(mode):04o}); refusing to use it: chmod 600 {path}")
            return f.read().decode("utf-8", "replace").strip()
    except OSError as e:
        raise UsageError(f"{what} {path}: {e.strerror}") from None


def token(env):
    """The API token to send, or None."""
    value = (env.get(TOKEN_ENV) or "").strip()
    if value:
        return value
    path = token_file(env)
    explicit = bool(env.get(TOKEN_FILE_ENV))
    if path is None or (not explicit and not os.path.exists(path)):
        return None
    return read_private(path) or None


def auth_headers(env, token_file=None):
    """
    ``{"Authorization": ["Bearer ..."]}``, or {} without a token; the file
    named by ``--token-file`` (``token_file``), when given, beats the
    environment (a token is not taken on the command line itself: others
    could read it in the process list).
    """
    value = read_private(token_file) if token_file else token(env)
    return {"Authorization": [f"Bearer {value}"]} if value else {}
