"""
Shared-secret authentication for AMP connections, both ways.

A pserv proves it knows the secret by answering the region's nonce with an
HMAC; the region proves it in return by answering the pserv's nonce.  The
secret never crosses the wire.  :class:`Gate` holds a connection's state and
guards every other command.
"""

import hashlib
import hmac
import secrets

import attrs

from powerctl.rpc.commands import NotAuthenticated


def proof(secret, nonce):
    """hex(HMAC-SHA256(secret, nonce)): what a holder of ``secret`` answers."""
    return hmac.new(secret, nonce.encode("ascii"), hashlib.sha256).hexdigest()


def new_nonce():
    return secrets.token_hex(16)


def valid(secret, nonce, answer):
    return nonce is not None and hmac.compare_digest(proof(secret, nonce), str(answer))


@attrs.define
class Gate:
    """One connection's authentication state."""

    nonce: str | None = None
    open: bool = False

    def check(self):
        """Raise :class:`NotAuthenticated` unless the peer has proved itself."""
        if not self.open:
            raise NotAuthenticated("authenticate first")
