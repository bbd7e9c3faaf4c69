"""
Every AMP command and error spoken between a region and a pserv.

This module is the protocol's documentation: another region controller
that implements these commands can drive a pserv.

Connection life cycle (the pserv dials the region):

1. pserv → region ``Challenge``; region answers a random nonce.
2. pserv → region ``Authenticate`` with ``HMAC-SHA256(secret, nonce)`` and a
   nonce of its own; region answers ``HMAC-SHA256(secret, pserv_nonce)`` so
   the pserv knows the region holds the secret too.  Until this succeeds
   every other command, in either direction, fails with
   ``NotAuthenticated``; a wrong proof drops the connection.
3. pserv → region ``Register`` (cluster, pserv name, version).
4. pserv → region ``Recover`` page by page: the non-terminal operations of
   its cluster, then the desired state of every node, each page well under
   AMP's 64 KiB per value.
5. From then on: region → pserv ``PowerOn``/``PowerOff``/``PowerSoftOff``/
   ``PowerCycle``/``PowerQuery`` (acknowledged at once; the work happens
   later) and ``ListActions``; pserv → region ``ReportOutcome`` (one per
   operation id, including coalesced and superseded ones),
   ``ReportPowerState`` (poll results, batched) and ``Heartbeat``.

No command waits for a BMC: the slowest answer is a database write.
"""

import json

from twisted.protocols import amp

#: Keep every JSON value comfortably below AMP's 65,535-byte value limit.
MAX_VALUE = 60_000


class JSON(amp.Argument):
    """A JSON document in one AMP value (so at most 64 KiB once encoded)."""

    def toString(self, obj):
        data = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")
        if len(data) > MAX_VALUE:
            raise amp.TooLong(False, True, b"json", None)
        return data

    def fromString(self, data):
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise BadArguments(f"malformed JSON argument: {e}") from None


# -- errors -----------------------------------------------------------------

class NotAuthenticated(Exception):
    """The peer has not proved it holds the shared secret."""


class AuthenticationFailed(Exception):
    """The proof of the shared secret was wrong."""


class BadArguments(Exception):
    """An argument is malformed or invalid (nothing was done)."""


class InvalidPowerConfig(Exception):
    """The node's power configuration is invalid (unknown driver, bad param)."""


class UnknownPserv(Exception):
    """A command that needs ``Register`` came before it."""


_COMMON_ERRORS = {
    NotAuthenticated: b"NOT_AUTHENTICATED",
    BadArguments: b"BAD_ARGUMENTS",
}


# -- pserv → region ------------------------------------------------------------

class Challenge(amp.Command):
    """First command of a connection: returns a fresh random nonce."""

    arguments = []
    response = [(b"nonce", amp.Unicode())]


class Authenticate(amp.Command):
    """Prove the secret: ``proof = hex(HMAC-SHA256(secret, nonce))``."""

    arguments = [
        (b"proof", amp.Unicode()),
        (b"nonce", amp.Unicode()),  # the pserv's challenge to the region
    ]
    response = [(b"proof", amp.Unicode())]
    errors = {AuthenticationFailed: b"AUTHENTICATION_FAILED"}
    fatalErrors = {AuthenticationFailed: b"AUTHENTICATION_FAILED"}


class Register(amp.Command):
    """Who the pserv is.  Re-registering after a reconnect is normal."""

    arguments = [
        (b"cluster", amp.Unicode()),
        (b"name", amp.Unicode()),
        (b"version", amp.Unicode()),
    ]
    response = [(b"region", amp.Unicode())]
    errors = dict(_COMMON_ERRORS)


class Recover(amp.Command):
    """
    One page of what the pserv must converge on.  Call with ``after_op=0``
    and ``after_node=""``, then with the cursors returned, until ``done``.
    ``operations``: ``[{"id", "node", "action", "power"}]`` (pending and
    running operations of the cluster, oldest first); ``nodes``:
    ``[{"name", "desired_state", "power"}]``.
    """

    arguments = [
        (b"after_op", amp.Integer()),
        (b"after_node", amp.Unicode()),
    ]
    response = [
        (b"operations", JSON()),
        (b"nodes", JSON()),
        (b"after_op", amp.Integer()),
        (b"after_node", amp.Unicode()),
        (b"done", amp.Boolean()),
    ]
    errors = {**_COMMON_ERRORS, UnknownPserv: b"UNKNOWN_PSERV"}


class ReportOutcome(amp.Command):
    """
    The end of one operation.  ``outcome``: ``succeeded``, ``failed``,
    ``superseded`` or ``cancelled``.  ``observed_state``: ``on``/``off`` or
    empty; ``coalesced_into``/``superseded_by``: operation ids or 0.
    Idempotent: repeating a report changes nothing.
    """

    arguments = [
        (b"operation_id", amp.Integer()),
        (b"outcome", amp.Unicode()),
        (b"observed_state", amp.Unicode()),
        (b"agent", amp.Unicode()),
        (b"error", amp.Unicode()),
        (b"coalesced_into", amp.Integer()),
        (b"superseded_by", amp.Integer()),
    ]
    response = [(b"recorded", amp.Boolean())]
    errors = {**_COMMON_ERRORS, UnknownPserv: b"UNKNOWN_PSERV"}


class ReportPowerState(amp.Command):
    """Poll results: ``states`` = ``[{"node", "state", "error"}]``."""

    arguments = [(b"states", JSON())]
    response = []
    errors = {**_COMMON_ERRORS, UnknownPserv: b"UNKNOWN_PSERV"}


class Heartbeat(amp.Command):
    """I am alive, with this many actions in play or waiting."""

    arguments = [(b"actions_in_flight", amp.Integer())]
    response = []
    errors = {**_COMMON_ERRORS, UnknownPserv: b"UNKNOWN_PSERV"}


# -- region → pserv --------------------------------------------------------

class _PowerCommand(amp.Command):
    """
    Start a power operation.  ``power`` is the node's resolved power
    configuration (``{"mode", "agents": [{"driver", "params"}]}``).  The
    answer comes at once: ``disposition`` is ``started``, ``waiting``,
    ``coalesced`` (then ``coalesced_into`` names the operation joined) or
    ``known`` (this operation id is already in play here).
    """

    action = None
    arguments = [
        (b"operation_id", amp.Integer()),
        (b"node", amp.Unicode()),
        (b"power", JSON()),
    ]
    response = [
        (b"disposition", amp.Unicode()),
        (b"coalesced_into", amp.Integer()),
    ]
    errors = {**_COMMON_ERRORS, InvalidPowerConfig: b"INVALID_POWER_CONFIG"}


class PowerOn(_PowerCommand):
    action = "on"


class PowerOff(_PowerCommand):
    action = "off"


class PowerSoftOff(_PowerCommand):
    action = "soft-off"


class PowerCycle(_PowerCommand):
    action = "cycle"


class PowerQuery(_PowerCommand):
    action = "query"


POWER_COMMANDS = {c.action: c for c in (PowerOn, PowerOff, PowerSoftOff, PowerCycle, PowerQuery)}


class ListActions(amp.Command):
    """
    What is in play and waiting on this pserv, a page at a time:
    ``[{"node", "running", "waiting", "query"}]`` where each is null or
    ``{"operation_id", "action", "joined", "started_at", "stopping"}``.
    """

    arguments = [(b"after_node", amp.Unicode()), (b"limit", amp.Integer())]
    response = [(b"nodes", JSON()), (b"done", amp.Boolean())]
    errors = dict(_COMMON_ERRORS)
