"""
What several benchmarks set up alike: a private PostgreSQL cluster, a
region service on loopback ports with its secret and key files, and an
admin token -- all removed again by :meth:`RegionHarness.close`.
"""

import json
import os
import tempfile

SECRET = b"bench-secret-of-enough-length"


class RegionHarness:
    """Start with ``await RegionHarness.start(reactor)``; ``close()`` undoes it all."""

    def __init__(self, reactor):
        self.reactor = reactor
        self._undo = []
        self.pg = self.region = self.token = self.api = None
        self.secret_file = None

    @classmethod
    async def start(cls, reactor, pool_size=8, **region_settings):
        import psycopg2

        from powerctl.config import RegionConfig
        from powerctl.devtools.pgcluster import PostgresCluster
        from powerctl.drivers.standard import standard_catalogue
        from powerctl.region.service import RegionService
        from powerctl.region.tokens import create_token_sync
        from powerctl.region.vault import create_key_file

        self = cls(reactor)
        try:
            self.pg = PostgresCluster.create()
            self._undo.append(self.pg.stop)
            conn = psycopg2.connect(self.pg.dsn())
            conn.autocommit = True
            conn.cursor().execute("CREATE DATABASE bench")
            conn.close()
            fd, self.secret_file = tempfile.mkstemp()
            os.write(fd, SECRET)
            os.close(fd)
            self._undo.append(lambda: os.unlink(self.secret_file))
            create_key_file(self.secret_file + ".key")
            self._undo.append(lambda: os.unlink(self.secret_file + ".key"))
            self.region = RegionService(RegionConfig(
                name="bench", database=self.dsn, api_endpoint="tcp:0:interface=127.0.0.1",
                rpc_endpoint="tcp:0:interface=127.0.0.1", secret_file=self.secret_file,
                key_file=self.secret_file + ".key", **region_settings),
                SECRET, reactor, standard_catalogue(reactor), pool_size=pool_size)
            self.region.startService()
            await self.region.whenReady()
            self.api = f"http://127.0.0.1:{self.region.api_port.getHost().port}"
            conn = psycopg2.connect(self.dsn)
            self.token = create_token_sync(conn, "bench", "admin", created_by="bench")[1]
            conn.close()
        except BaseException:
            await self.close()
            raise
        return self

    @property
    def dsn(self):
        return self.pg.dsn("bench")

    @property
    def rpc(self):
        return f"tcp:host=127.0.0.1:port={self.region.rpc_port.getHost().port}"

    def client(self, persistent=16):
        """An HTTP client with the admin token: ``await call(method, path, body)``."""
        import treq
        from twisted.web.client import HTTPConnectionPool

        pool = HTTPConnectionPool(self.reactor)
        pool.maxPersistentPerHost = persistent
        self._undo.append(lambda: pool.closeCachedConnections())
        headers = {b"Content-Type": [b"application/json"],
                   b"Authorization": [f"Bearer {self.token}".encode()]}

        async def call(method, path, body=None, raw=False):
            r = await treq.request(method, self.api + path, pool=pool, headers=headers,
                                   data=json.dumps(body).encode() if body is not None else None)
            content = await treq.content(r)
            return r.code, content if raw else json.loads(content or b"null")

        return call

    async def close(self):
        if self.region is not None and self.region.running:
            await self.region.stopService()
        while self._undo:
            result = self._undo.pop()()
            if hasattr(result, "addCallback"):
                await result


def run(bench, args):
    """
    Install the product's reactor, run ``bench(reactor, args)`` (a
    coroutine function) in it, print its traceback if it fails, and stop.
    """
    import sys

    from twisted.internet import defer

    from powerctl import reactor as reactor_choice

    reactor = reactor_choice.install()

    def go():
        d = defer.ensureDeferred(bench(reactor, args))
        d.addErrback(lambda f: print(f.getTraceback(), file=sys.stderr))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
