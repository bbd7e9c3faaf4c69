"""
No BMC lock-outs (issue 10): many BMCs lock an account after a few failed
logins (OpenBMC: 5 within 300 s, for 300 s).  Per set of credentials (the
driver, the device's address, the user and a hash of the secrets), after
``limit`` authentication failures within ``window`` seconds the pserv stops
trying: every operation and poll fails at once with error kind ``auth``
("credentials rejected").  The account is then *locked out* and stays so
until its credentials change (a new key) or an operator clears it; the
window only bounds how far back failures count towards the limit.

A lock-out must outlive this process and a hand-over of the node to
another pserv, or the next one would try again and could lock the BMC's
account: the guard tells ``on_lockout(node, agent, failures, reason)``
about each (node, agent) using the locked credentials, the pserv reports it
to the region, which keeps it and sends it back with the node's
configuration to whichever pserv drives the node (:meth:`LockoutGuard.hold`).
An operator clears it through the region (:meth:`LockoutGuard.release`).

While credentials are unproven (never accepted, or refused since), at most
``limit`` minus the failures so far may be in flight at once, so even a
burst of operations and polls cannot send more than ``limit`` failed logins
to the device; the others *wait* for those attempts to end (one Redfish
service or PDU serves many nodes with one account: their first power-on
must not fail because the credentials are not proven yet).  Once one
succeeds the credentials are proven and everything waiting runs; once the
account locks, everything waiting fails with the lock-out.

:class:`LockoutGuard` is the decision (no I/O, times from a clock);
:class:`GuardedDriver` puts it around one agent's driver, and
:meth:`LockoutGuard.attempt` around any other call (the poller's batched
SNMP reads).
"""

import functools
import hashlib
import json
import sys

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from powerctl.drivers.errors import AuthenticationError
from powerctl.drivers.interface import IPowerDriver

#: Parameters that say which device and account a driver logs in to.
_ACCOUNT = ("host", "url", "port", "username", "user", "unit")


def credentials_key(driver_name, params, secrets):
    """
    A key for one account on one device; the secrets only hashed.  The key
    is a 128-bit digest of the driver, the account and the secrets' hashes
    (32 hex digits, not the ~200-character JSON: every IPMI node has an
    account of its own), interned: the nodes behind one PDU or Redfish
    service, and each node's guarded driver and registration, share one
    string (issue 14: memory).
    """
    account = {k: params.get(k) for k in _ACCOUNT if params.get(k) is not None}
    hidden = {k: hashlib.sha256(json.dumps(params.get(k), sort_keys=True).encode())
              .hexdigest() for k in sorted(secrets) if params.get(k) is not None}
    # (Both dicts are built in a fixed order, so sort_keys only makes that
    # explicit: make mutate's sort_keys=False is an equivalent mutant.)
    text = json.dumps([driver_name, account, hidden], sort_keys=True, default=str)
    return sys.intern(hashlib.blake2b(text.encode(), digest_size=16).hexdigest())


def agent_key(catalogue, agent):
    """The :func:`credentials_key` of one agent (``{"driver", "params"}``)."""
    name = agent["driver"]
    try:
        secrets = catalogue.get(name).schema.secrets
    except Exception:
        secrets = frozenset()
    return credentials_key(name, agent.get("params") or {}, secrets)


@attrs.define
class _Account:
    failures: list = attrs.field(factory=list)
    in_flight: int = 0
    proven: bool = False
    #: (node, agent) -> the region's lock-out id (None until it acknowledged)
    held: dict = attrs.field(factory=dict)
    #: (node, agent) -> the guard's generation when the region's id was learnt
    known_at: dict = attrs.field(factory=dict)
    #: Deferreds of attempts waiting for unproven credentials to be tried
    waiting: list = attrs.field(factory=list)


@attrs.define
class LockoutGuard:
    clock: object
    limit: int = 3
    window: float = 300.0
    #: ``on_lockout(node, agent, failures, reason)``, once per (node, agent)
    #: using credentials that just got locked out.
    on_lockout: object = None
    log: object = attrs.field(factory=Logger, init=False)
    _accounts: dict = attrs.field(factory=dict, init=False)
    #: node -> a tuple of its agents' keys, by agent index (None where no
    #: agent registered): one tuple per node rather than a (node, agent)
    #: pair and a set of agents per node (issue 14: about 300 B a node);
    #: by node, so a recovery syncing every node walks no other node's
    _nodes: dict = attrs.field(factory=dict, init=False)
    #: key -> how many (node, agent) of ``_nodes`` use it: "is it still
    #: used?" without a walk over every node, which made forgetting all
    #: nodes (a pserv stopping) quadratic: 10,000 nodes, 3.2 s (now 0.02 s).
    _uses: dict = attrs.field(factory=dict, init=False)
    #: Only ever compared with itself, so any start value would do (make
    #: mutate's default=+-1 is equivalent, as is init=True on these private
    #: fields: the constructor would only take one more optional argument).
    _generation: int = attrs.field(default=0, init=False)

    def _account(self, key):
        account = self._accounts.setdefault(key, _Account())
        now = self.clock.seconds()
        account.failures = [t for t in account.failures if now - t < self.window]
        return account

    # -- who uses which credentials --------------------------------------

    def _key_of(self, node, agent):
        """The key (``node``, ``agent``) registered with, or None."""
        keys = self._nodes.get(node)
        if keys is None or not isinstance(agent, int) or not 0 <= agent < len(keys):
            return None
        return keys[agent]

    def register(self, node, agent, key):
        """(``node``, ``agent``) logs in with ``key`` from now on (its configuration)."""
        agent = int(agent)
        if agent < 0:
            raise ValueError(f"agent index {agent} is negative")
        old = self._key_of(node, agent)
        if old is not None and old != key:
            # New credentials: whatever held the old ones does not apply.
            self._drop(old, [(node, agent)])
        keys = self._nodes.get(node, ())
        # (Padding to ``agent`` or to ``agent + 1`` entries gives the same
        # tuple: the slice below replaces that last None or appends the key.
        # make mutate's ``>`` here and ``agent + 0`` are equivalent mutants.)
        if agent >= len(keys):
            keys += (None,) * (agent + 1 - len(keys))
        self._nodes[node] = keys[:agent] + (key,) + keys[agent + 1:]
        self._count(keys[agent], -1)
        self._count(key, +1)

    def unregister(self, node):
        """``node`` is not driven here any more (its lock-outs stay with the region)."""
        # The node goes first, so _drop's "still used?" sees only the other
        # nodes; then each of its keys once with all its agents using it (the
        # two outlets of one PDU): held lock-outs of these agents forgotten,
        # an account another node still uses kept, one nobody uses dropped.
        users = {}
        for agent, key in enumerate(self._nodes.pop(node, ())):
            if key is not None:
                users.setdefault(key, []).append((node, agent))
                self._count(key, -1)
        for key, agents in users.items():
            self._drop(key, agents, release=False)

    def _users_of_node(self, node):
        """``[((node, agent), key)]`` for ``node``'s agents: no walk over every node."""
        return [((node, a), key) for a, key in enumerate(self._nodes.get(node, ()))
                if key is not None]

    def _users_of(self, key):
        return sorted((n, a) for n, keys in self._nodes.items()
                      for a, k in enumerate(keys) if k == key)

    def _count(self, key, delta):
        """One more or one fewer (node, agent) of ``_nodes`` uses ``key`` (None: no key)."""
        if key is None:
            return
        uses = self._uses.get(key, 0) + delta
        if uses > 0:
            self._uses[key] = uses
        else:
            self._uses.pop(key, None)

    def _used(self, key):
        """Whether any (node, agent) logs in with ``key``."""
        return key in self._uses

    def _drop(self, key, users, release=True):
        account = self._accounts.get(key)
        if account is None:
            return
        was_held = bool(account.held)
        for user in users:
            account.held.pop(user, None)
            account.known_at.pop(user, None)
        if was_held and not account.held and release:
            # Cleared, or credentials changed: start afresh, unproven.
            account.failures.clear()
            account.proven = False
        self._wake(key)
        if not account.held and not account.in_flight and not self._used(key) \
                and not account.failures and not account.waiting:
            self._accounts.pop(key, None)

    # -- the region's view ------------------------------------------------

    def generation(self):
        """A counter of what the region told us; see :meth:`sync`."""
        return self._generation

    def hold(self, node, agent, lockout_id):
        """The region says (``node``, ``agent``)'s credentials are locked out."""
        key = self._key_of(node, agent)
        if key is None:
            return
        account = self._account(key)
        account.held[(node, agent)] = int(lockout_id)
        account.known_at[(node, agent)] = self._generation
        account.proven = False

    def acknowledged(self, node, agent, lockout_id):
        """The region recorded our report under ``lockout_id``."""
        self._generation += 1
        key = self._key_of(node, agent)
        account = self._accounts.get(key) if key is not None else None
        if account is not None and (node, agent) in account.held:
            account.held[(node, agent)] = int(lockout_id)
            account.known_at[(node, agent)] = self._generation

    def release(self, node, agent=None):
        """An operator cleared ``node``'s lock-out (every agent's, or ``agent``'s)."""
        for (n, a), key in self._users_of_node(node):
            if agent is None or a == agent:
                # (None, None): locked while no node used the credentials (a
                # call that ended after its node was forgotten)
                self._drop(key, [(n, a), (None, None)])

    def sync(self, node, listed, since):
        """
        A listing of the region read after :meth:`generation` was ``since``
        names ``listed`` (agent -> id) for ``node``: a lock-out the region
        had acknowledged before then and no longer lists was cleared.
        """
        for agent, lockout_id in listed.items():
            self.hold(node, agent, lockout_id)
        for (n, a), key in self._users_of_node(node):
            if a in listed:
                continue
            account = self._accounts.get(key)
            if account is None or (n, a) not in account.held:
                continue
            # (hold() and acknowledged(), the only writers of a non-None
            # id, also set known_at: the ``since + 1`` default is never used.)
            if account.held[(n, a)] is not None and account.known_at.get((n, a), since + 1) <= since:
                self._drop(key, [(n, a)])

    def held(self, node):
        """Agents of ``node`` held locked out (agent -> region id or None)."""
        out = {}
        for (n, a), key in self._users_of_node(node):
            account = self._accounts.get(key)
            if account is not None and account.held:
                out[a] = account.held.get((n, a))
        return out

    # -- the decision -----------------------------------------------------

    def refusal(self, key):
        """Why no attempt may be made now with these credentials, or None."""
        account = self._account(key)
        if self._locked(account):
            return ("credentials rejected: the device refused them too often "
                    f"({self.limit} times within {self.window:g} s); not trying again (it "
                    "could lock the account) until the credentials change or an operator "
                    "clears the lock-out (powerctl lockout clear)")
        if self._must_wait(account):
            return ("credentials not proven yet and as many attempts in flight as the "
                    "device may refuse; not trying more at once")
        return None

    def _locked(self, account):
        return bool(account.held) or len(account.failures) >= self.limit

    def _must_wait(self, account):
        return not account.proven and len(account.failures) + account.in_flight >= self.limit

    def accepted(self, key):
        """
        The device answered with ``key``'s credentials while an attempt was
        still under way (a driver's first query of a verified power-on):
        they are proven now, and the attempts waiting for that proof go at
        once.  Waiting for the attempt's end instead held them a whole
        verified action (query, command, polling: a second or more), and a
        pserv taking 1,000 Redfish power-ons on 100 services at start ran
        about 36 of its 64 actions at once instead of 59 (bench/rows.py
        --only replay --trace).
        """
        account = self._accounts.get(key)
        if account is None or account.proven:
            return
        account.failures.clear()
        account.proven = True
        self._wake(key)

    def proven(self, key):
        """Whether ``key``'s credentials were accepted since last refused."""
        account = self._accounts.get(key)
        return account is not None and account.proven

    def started(self, key):
        self._account(key).in_flight += 1

    def ended(self, key, outcome):
        """``outcome``: "ok", "auth" (refused credentials) or anything else."""
        account = self._account(key)
        # (A guard: attempt() pairs started/ended and _drop keeps an account
        # with attempts in flight, so in_flight is at least 1 here; make
        # mutate's max(-1, ...) is an equivalent mutant.)
        account.in_flight = max(0, account.in_flight - 1)
        if outcome == "ok":
            account.failures.clear()
            account.proven = True
        elif outcome == "auth":
            account.failures.append(self.clock.seconds())
            account.proven = False
            if len(account.failures) >= self.limit and not account.held:
                self._lock(key, account)
        self._wake(key)

    def _wake(self, key):
        """
        Let waiting attempts go as far as the account now allows: all of
        them once proven (or locked: they then fail with the lock-out), as
        many as there are free attempts while unproven.
        """
        account = self._accounts.get(key)
        while account is not None and account.waiting and (
                self._locked(account) or not self._must_wait(account)):
            # Firing one starts its attempt at once (in_flight goes up).
            account.waiting.pop(0).callback(None)

    def _lock(self, key, account):
        users = self._users_of(key) or [(None, None)]
        failures = len(account.failures)
        reason = f"{failures} authentication failures within {self.window:g} s"
        for user in users:
            account.held[user] = None
        for node, agent in users:
            # (All are skipped or none: (None, None) only ever comes alone.
            # make mutate's ``break`` here is an equivalent mutant.)
            if node is None or self.on_lockout is None:
                continue
            try:
                self.on_lockout(node, agent, failures, reason)
            except Exception:
                self.log.failure("reporting the lock-out of node {node}", node=node)

    def failures(self, key):
        return len(self._account(key).failures)

    def attempt(self, key, call):
        """
        ``call()`` (a Deferred) if ``key`` may be tried now, counted; failed
        with the lock-out if the account is locked; otherwise (unproven
        credentials, as many attempts in flight as may fail) it waits its
        turn.  Cancelling a waiting attempt takes it out of the queue.
        """
        account = self._account(key)
        if not self._locked(account) and self._must_wait(account):
            def withdraw(d):
                if d in account.waiting:
                    account.waiting.remove(d)

            turn = defer.Deferred(withdraw)
            account.waiting.append(turn)
            return turn.addCallback(lambda _: self.attempt(key, call))
        refusal = self.refusal(key)
        if refusal is not None:
            return defer.fail(AuthenticationError(refusal))
        self.started(key)
        d = defer.maybeDeferred(call)

        def ok(result):
            self.ended(key, "ok")
            return result

        def failed(failure):
            self.ended(key, "auth" if failure.check(AuthenticationError) else "other")
            return failure

        return d.addCallbacks(ok, failed)


@implementer(IPowerDriver)
class GuardedDriver:
    """A driver whose calls go through a :class:`LockoutGuard` under ``key``."""

    __slots__ = ("_driver", "_guard", "_key")  # one per agent (issue 14: memory)

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
        guard, key, driver = self._guard, self._key, self._driver
        if guard.proven(key) or not hasattr(type(driver), "accepted"):
            return guard.attempt(key, getattr(driver, name))

        def call():
            # Told of the first answer (VerifyingDriver.accepted) during this
            # attempt only: nothing is kept per driver once it is over.
            driver.accepted = functools.partial(guard.accepted, key)

            def over(result):
                driver.__dict__.pop("accepted", None)
                return result

            return getattr(driver, name)().addBoth(over)

        return guard.attempt(key, call)

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
    return GuardedDriver(driver, guard, agent_key(catalogue, agent))
