"""
Who may do what through the REST API: pure decisions, no I/O.

A caller is a :class:`Principal` -- the API token it presented: a name, a
role and optionally the clusters it is confined to.  Roles are ordered:

``viewer``
    reads everything it may see;
``operator``
    also power requests, cancel and confirm;
``admin``
    also nodes, pod managers, clusters, tokens and the audit trail.

Every route handler of :class:`powerctl.region.api.Api` (and the guard's own
routes) has a :class:`Rule` in :data:`RULES`, keyed by the handler's name:
the least role it needs and how the cluster scope applies (:class:`Scope`).
A handler without a rule is refused to everybody (:func:`denial`), so a
route added without thinking about access is closed, not open.

The guard (:mod:`powerctl.region.guard`) does the I/O -- finds the token,
the clusters a request touches -- and asks :func:`denial`; it keeps a
:class:`FailureLimiter` per process to slow down guessing.
"""

import enum
import hashlib

import attrs

ROLES = ("viewer", "operator", "admin")
_RANK = {role: rank for rank, role in enumerate(ROLES)}
#: What a token looks like: this prefix and 43 url-safe base64 characters
#: (32 random bytes, 256 bits).
TOKEN_PREFIX = "pct_"


class Scope(enum.Enum):
    """How a route meets a token's cluster scope."""

    #: Not about any cluster (pod managers read, the OpenAPI document).
    ANY = "any"
    #: Spans every cluster: only a token without a cluster scope.
    UNSCOPED = "unscoped"
    #: The node of the path (``{name}``); a change's new cluster too.
    NODE = "node"
    #: The cluster named in the body of a new node.
    NEW_NODE = "new-node"
    #: The node of the operation of the path (``{op_id}``).
    OPERATION = "operation"
    #: The cluster of the path (``clusters/{name}``).
    CLUSTER = "cluster"
    #: A list: a scoped token sees only its clusters' items.
    LIST = "list"
    #: A bulk request: the cluster it names, or the clusters of the nodes it names.
    BULK = "bulk"


@attrs.frozen
class Rule:
    role: str
    scope: Scope


@attrs.frozen
class Principal:
    """An authenticated caller. ``clusters`` None: every cluster."""

    name: str
    role: str
    clusters: frozenset = None
    token_id: int = None

    def may(self, role):
        return _RANK[self.role] >= _RANK[role]

    def covers(self, cluster):
        return self.clusters is None or cluster in self.clusters


_V, _O, _A = ROLES

RULES = {
    "list_nodes": Rule(_V, Scope.LIST),
    "create_node": Rule(_A, Scope.NEW_NODE),
    "get_node": Rule(_V, Scope.NODE),
    "update_node": Rule(_A, Scope.NODE),
    "delete_node": Rule(_A, Scope.NODE),
    "request_power": Rule(_O, Scope.NODE),
    "bulk_power": Rule(_O, Scope.BULK),
    "list_ops": Rule(_V, Scope.LIST),
    "get_op": Rule(_V, Scope.OPERATION),
    "cancel_op": Rule(_O, Scope.OPERATION),
    "confirm_op": Rule(_O, Scope.OPERATION),
    "list_pod_managers": Rule(_V, Scope.ANY),
    "create_pod_manager": Rule(_A, Scope.UNSCOPED),
    "get_pod_manager": Rule(_V, Scope.ANY),
    "update_pod_manager": Rule(_A, Scope.UNSCOPED),
    "delete_pod_manager": Rule(_A, Scope.UNSCOPED),
    "list_clusters": Rule(_V, Scope.LIST),
    "update_cluster": Rule(_A, Scope.CLUSTER),
    "list_circuits": Rule(_V, Scope.CLUSTER),
    "set_circuit": Rule(_A, Scope.CLUSTER),
    "delete_circuit": Rule(_A, Scope.CLUSTER),
    "get_auto_fence": Rule(_V, Scope.CLUSTER),
    "set_auto_fence": Rule(_A, Scope.CLUSTER),
    "delete_auto_fence": Rule(_A, Scope.CLUSTER),
    "get_activity": Rule(_V, Scope.LIST),
    "openapi": Rule(_V, Scope.ANY),
    "stream_events": Rule(_V, Scope.LIST),  # powerctl.region.events: filtered per token
    "list_tokens": Rule(_A, Scope.UNSCOPED),
    "create_token": Rule(_A, Scope.UNSCOPED),
    "revoke_token": Rule(_A, Scope.UNSCOPED),
    "list_audit": Rule(_A, Scope.UNSCOPED),
    "list_lockouts": Rule(_V, Scope.LIST),
    "clear_lockout": Rule(_O, Scope.NODE),
}


def rule_for(handler_name):
    """The rule of a route handler, or None (refused to everybody)."""
    return RULES.get(handler_name)


def denial(principal, rule, clusters=()):
    """
    Why ``principal`` may not use a route with ``rule`` touching
    ``clusters`` (the clusters the request reads or changes, as far as
    they are known), or None when it may.
    """
    if rule is None:
        return "this route has no access rule; nobody may use it"
    if not principal.may(rule.role):
        return f"role {principal.role!r} may not do this; it needs {rule.role!r}"
    if principal.clusters is None:
        return None
    if rule.scope is Scope.UNSCOPED:
        return "a token scoped to clusters may not do this; it spans every cluster"
    if rule.scope is Scope.NEW_NODE and not clusters:
        return "a token scoped to clusters must name an allowed cluster"
    outside = sorted(c for c in clusters if not principal.covers(c))
    if outside:
        return f"this token is not allowed on cluster {outside[0]!r}"
    return None


def is_write(method):
    """Whether an HTTP method changes something (and is audited)."""
    return method not in ("GET", "HEAD", "OPTIONS")


def bearer(header):
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value or " " in value:
        return None
    return value


def token_hash(token):
    """What is stored of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_role(role):
    if role not in ROLES:
        raise ValueError(f"role: must be one of {', '.join(ROLES)}, not {role!r}")
    return role


def filter_listing(principal, handler_name, body, cluster_of_node=None):
    """
    A list answer reduced to what a scoped ``principal`` may see:
    ``cluster_of_node`` maps the node names of an operation list to their
    clusters.  Unscoped principals see everything.
    """
    if principal.clusters is None:
        return body
    if handler_name == "list_nodes":
        if not isinstance(body, list):
            # encoded by PostgreSQL with the token's scope in its WHERE
            # (powerctl.region.paging.EncodedPage): checked, not filtered
            outside = sorted(c for c in body.clusters if not principal.covers(c))
            if outside:
                raise RuntimeError(f"a node list for a token scoped to "
                                   f"{sorted(principal.clusters)} holds nodes of {outside}")
            return body
        return [n for n in body if principal.covers(n.get("cluster"))]
    if handler_name == "list_lockouts":
        return [n for n in body if principal.covers(n.get("cluster"))]
    if handler_name == "list_clusters":
        return [c for c in body if principal.covers(c.get("name"))]
    if handler_name == "list_ops":
        mapping = cluster_of_node or {}
        return [o for o in body if principal.covers(mapping.get(o.get("node")))]
    if handler_name == "get_activity" and isinstance(body, dict):
        pservs = [p for p in body.get("pservs", []) if principal.covers(p.get("cluster"))]
        totals = dict(body.get("totals") or {})
        totals.update(pservs=len(pservs), errors=sum(1 for p in pservs if p.get("error")),
                      nodes=sum(len(p.get("nodes", [])) for p in pservs))
        return dict(body, pservs=pservs, totals=totals)
    return body


@attrs.define
class FailureLimiter:
    """
    Failed authentications per source address: after ``limit`` failures
    within ``window`` seconds an address is refused (429) until the oldest
    of them is older than ``window``.  Times are passed in (no clock of its
    own); at most ``max_addresses`` addresses are remembered, the stalest
    forgotten first.
    """

    limit: int = 10
    window: float = 60.0
    max_addresses: int = 10_000
    _failures: dict = attrs.field(factory=dict, init=False)

    def _recent(self, address, now):
        times = [t for t in self._failures.get(address, ()) if now - t < self.window]
        if times:
            self._failures[address] = times
        else:
            self._failures.pop(address, None)
        return times

    def blocked(self, address, now):
        """Seconds until ``address`` may try again (0: it may now)."""
        times = self._recent(address, now)
        if len(times) < self.limit:
            return 0
        return max(0.0, self.window - (now - times[-self.limit]))

    def failed(self, address, now):
        times = self._recent(address, now)
        times.append(now)
        self._failures[address] = times[-self.limit:]
        if len(self._failures) > self.max_addresses:
            stalest = min(self._failures, key=lambda a: self._failures[a][-1])
            del self._failures[stalest]


#: How long a region trusts a token it found live without asking the
#: database again, in seconds.  A revocation reaches every region at once
#: through ``NOTIFY tokens``; this bounds how long a token stays usable on a
#: region that missed that notification (its listening connection down).
TOKEN_TTL = 1.0


@attrs.define
class RecentTokens:
    """
    The principals of tokens recently found live, by token hash, each kept
    ``ttl`` seconds from the look-up that found it (issue 14: one database
    read per request was a fifth of a power request's cost).  Times are
    passed in (no clock of its own); at most ``size`` tokens, the oldest
    forgotten first.  Only live tokens are kept: an unknown or revoked one is
    looked up every time (and counted by the :class:`FailureLimiter`).

    A look-up that started before a revocation was heard must not put back
    what the revocation removed: :meth:`put` takes the :attr:`generation`
    read when the look-up started and keeps nothing if a :meth:`forget`
    came in between.
    """

    ttl: float = TOKEN_TTL
    size: int = 1024
    #: bumped by every forget: a look-up older than it is not kept
    generation: int = attrs.field(default=0, init=False)
    _entries: dict = attrs.field(factory=dict, init=False)  # hash -> (expires, principal)

    def get(self, key, now):
        """The principal of token hash ``key`` if found live less than ``ttl`` ago, else None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry[0]:
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key, principal, started, generation):
        """
        Keep what a look-up begun at time ``started`` found (when
        ``generation`` is still :attr:`generation`), until ``started + ttl``.
        """
        if generation != self.generation or self.ttl <= 0:
            return
        self._entries.pop(key, None)
        self._entries[key] = (started + self.ttl, principal)
        while len(self._entries) > self.size:
            del self._entries[next(iter(self._entries))]  # the oldest put

    def forget(self, token_id=None):
        """Forget the token ``token_id`` (every token: None); look-ups under way are not kept."""
        self.generation += 1
        if token_id is None:
            self._entries.clear()
            return
        for key in [k for k, (_, p) in self._entries.items() if p.token_id == token_id]:
            del self._entries[key]


_PRINCIPAL = "_powerctl_principal"


def attach(request, principal):
    """Remember who is asking, on the request (read by :func:`principal_of`)."""
    setattr(request, _PRINCIPAL, principal)


def principal_of(request):
    """The :class:`Principal` the guard admitted for ``request``, or None."""
    return getattr(request, _PRINCIPAL, None)
