"""
Per-cluster pserv credentials (issue 10), the parts both sides share.

A credential file holds one line, ``pcc1:<id>:<secret>``.  The pserv proves
it with the same HMAC challenge as the shared secret (the secret never
crosses the wire) and names the credential's ``id`` in ``Authenticate``;
the region looks the id up (:mod:`powerctl.region.pservcreds`) and admits
the pserv to that credential's cluster only.  A plain shared secret (bytes)
still works everywhere a credential does, and admits every cluster.
"""

import os
import secrets
import stat

import attrs

PREFIX = "pcc1"


class CredentialError(ValueError):
    """A credential file that is unreadable, malformed or too open."""


@attrs.frozen
class Credential:
    id: str
    secret: bytes = attrs.field(repr=False)

    def text(self):
        """The credential file's content."""
        return f"{PREFIX}:{self.id}:{self.secret.decode('ascii')}\n"


def new_credential():
    return Credential(secrets.token_hex(8), secrets.token_urlsafe(32).encode("ascii"))


def parse(text):
    parts = text.strip().split(":")
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or len(parts[2]) < 16:
        raise CredentialError("not a pserv credential (expected pcc1:<id>:<secret>)")
    return Credential(parts[1], parts[2].encode("ascii"))


def read_credential_file(path):
    """The credential in ``path``; refused when other users may read it."""
    try:
        with open(path, "r", encoding="ascii", errors="replace") as f:
            mode = os.fstat(f.fileno()).st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise CredentialError(
                    f"credential file {path} is accessible by other users (mode "
                    f"{stat.S_IMODE(mode):04o}); refusing to use it: chmod 600 {path}")
            text = f.read()
    except OSError as e:
        raise CredentialError(f"credential file {path}: {e.strerror}") from None
    try:
        return parse(text)
    except CredentialError as e:
        raise CredentialError(f"credential file {path}: {e}") from None


def key_of(secret):
    """The HMAC key of a shared secret (bytes) or a :class:`Credential`."""
    return secret.secret if isinstance(secret, Credential) else secret


def authenticate_arguments(secret):
    """The extra ``Authenticate`` arguments: the credential's id, if any."""
    return {"credential": secret.id} if isinstance(secret, Credential) else {}
