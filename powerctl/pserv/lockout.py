"""
No BMC lock-outs (issue 10): many BMCs lock an account after a few failed
logins (OpenBMC: 5 within 300 s, for 300 s).  Per set of credentials (the
driver, the device's address, the user and a hash of the secrets), after
``limit`` authentication failures within ``window`` seconds the pserv stops
trying: every operation and poll fails at once with error kind ``auth``
("credentials rejected") until the credentials change (a new key) or the
window has passed.

While credentials are unproven (never accepted, or refused since), at most
``limit`` minus the failures so far may be in flight at once, so even a
burst of operations and polls cannot send more than ``limit`` failed logins
to the device; once one succeeds they are proven and run freely.

:class:`LockoutGuard` is the decision (no I/O, times from a clock);
:class:`GuardedDriver` puts it around one agent's driver.  A node has one
owning pserv, so the count lives where every attempt on the node is made.
"""

import hashlib
import json

import attrs
from twisted.internet import defer
from zope.interface import implementer

from powerctl.drivers.errors import AuthenticationError
from powerctl.drivers.interface import IPowerDriver

#: Parameters that say which device and account a driver logs in to.
_ACCOUNT = ("host", "url", "port", "username", "user", "unit")


def credentials_key(driver_name, params, secrets):
    """A key for one account on one device; the secrets only hashed."""
    account = {k: params.get(k) for k in _ACCOUNT if params.get(k) is not None}
    hidden = {k: hashlib.sha256(json.dumps(params.get(k), sort_keys=True).encode())
              .hexdigest() for k in sorted(secrets) if params.get(k) is not None}
    return json.dumps([driver_name, account, hidden], sort_keys=True, default=str)


@attrs.define
class _Account:
    failures: list = attrs.field(factory=list)
    in_flight: int = 0
    proven: bool = False


@attrs.define
class LockoutGuard:
    clock: object
    limit: int = 3
    window: float = 300.0
    _accounts: dict = attrs.field(factory=dict, init=False)

    def _account(self, key):
        account = self._accounts.setdefault(key, _Account())
        now = self.clock.seconds()
        account.failures = [t for t in account.failures if now - t < self.window]
        return account

    def refusal(self, key):
        """Why no attempt may be made now with these credentials, or None."""
        account = self._account(key)
        if len(account.failures) >= self.limit:
            return (f"credentials rejected: {len(account.failures)} authentication failures "
                    f"within {self.window:g} s; not trying again (the device could lock the "
                    "account) until the credentials change")
        if not account.proven and len(account.failures) + account.in_flight >= self.limit:
            return ("credentials not proven yet and as many attempts in flight as the "
                    "device may refuse; not trying more at once")
        return None

    def started(self, key):
        self._account(key).in_flight += 1

    def ended(self, key, outcome):
        """``outcome``: "ok", "auth" (refused credentials) or anything else."""
        account = self._account(key)
        account.in_flight = max(0, account.in_flight - 1)
        if outcome == "ok":
            account.failures.clear()
            account.proven = True
        elif outcome == "auth":
            account.failures.append(self.clock.seconds())
            account.proven = False

    def failures(self, key):
        return len(self._account(key).failures)


@implementer(IPowerDriver)
class GuardedDriver:
    """A driver whose calls go through a :class:`LockoutGuard` under ``key``."""

    def __init__(self, driver, guard, key):
        self._driver = driver
        self._guard = guard
        self._key = key

    @property
    def capabilities(self):
        return self._driver.capabilities

    def __getattr__(self, name):
        return getattr(self._driver, name)

    def _call(self, name):
        refusal = self._guard.refusal(self._key)
        if refusal is not None:
            return defer.fail(AuthenticationError(refusal))
        self._guard.started(self._key)
        d = defer.maybeDeferred(getattr(self._driver, name))

        def ok(result):
            self._guard.ended(self._key, "ok")
            return result

        def failed(failure):
            self._guard.ended(self._key,
                              "auth" if failure.check(AuthenticationError) else "other")
            return failure

        return d.addCallbacks(ok, failed)

    def on(self):
        return self._call("on")

    def off(self):
        return self._call("off")

    def soft_off(self):
        return self._call("soft_off")

    def cycle(self):
        return self._call("cycle")

    def query(self):
        return self._call("query")

    def quiesced(self):
        return self._driver.quiesced()


def guarded(driver, guard, catalogue, agent):
    """``driver`` (built for ``agent``) behind ``guard``, keyed by its credentials."""
    name = agent["driver"]
    try:
        secrets = catalogue.get(name).schema.secrets
    except Exception:
        secrets = frozenset()
    return GuardedDriver(driver, guard, credentials_key(name, agent.get("params") or {},
                                                          secrets))
