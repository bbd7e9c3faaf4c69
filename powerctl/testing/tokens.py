"""
An in-memory stand-in for the region's API token table
(:class:`powerctl.region.tokens.TokenStore`), for tests and benchmarks of
the REST API without PostgreSQL.

It answers what :class:`powerctl.region.guard.ApiGuard` asks: who a token
is, which cluster a node or an operation belongs to (from a
:class:`~powerctl.testing.region.FakeRegionStore` when given), and it
keeps the audit records it is handed in :attr:`audited`.  Creating,
listing and revoking tokens through ``/v1/tokens`` are the real store's
business and are not reproduced.
"""

from powerctl.region.auth import Principal
from powerctl.region.guard import ApiGuard

#: The token :func:`admin_guard` admits, as an admin named ``ADMIN``.
ADMIN_TOKEN = "pct_test-admin-token"
ADMIN = "test-admin"


class FakeTokens:
    """
    :param principals: ``{token: Principal}``.
    :param store: a FakeRegionStore whose nodes and operations say which
        cluster they belong to (for tokens confined to clusters).
    """

    def __init__(self, principals, store=None):
        self.principals = dict(principals)
        self.store = store
        self.audited = []

    async def authenticate(self, token):
        return self.principals.get(token)

    async def audit(self, actor, source, method, path, status, outcome):
        self.audited.append((actor, method, path, status, outcome))

    async def cluster_of_node(self, name):
        node = self.store.node_rows.get(name) if self.store is not None else None
        return node["cluster"] if node else None

    async def cluster_of_op(self, op_id):
        """As the real one: '' when the node is gone, None when there is no such op."""
        try:
            op = self.store.op_rows.get(int(op_id)) if self.store is not None else None
        except ValueError:
            return None
        if op is None:
            return None
        return await self.cluster_of_node(op["node"]) or ""

    async def clusters_of_nodes(self, names):
        found = {name: await self.cluster_of_node(name)
                 for name in names if isinstance(name, str)}
        return {name: cluster for name, cluster in found.items() if cluster is not None}


def admin_guard(clock, store=None, log=None):
    """An :class:`ApiGuard` admitting :data:`ADMIN_TOKEN` as an admin."""
    tokens = FakeTokens({ADMIN_TOKEN: Principal(ADMIN, "admin")}, store)
    return ApiGuard(tokens, clock, log=log)


def bearer(token=ADMIN_TOKEN):
    """The request headers that present ``token``."""
    return {"Authorization": [f"Bearer {token}"]}
