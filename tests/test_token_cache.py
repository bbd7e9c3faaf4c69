"""
Issue 14: a region trusts a token it found live for a second without
reading it again (:class:`powerctl.region.auth.RecentTokens`), and a
revoked token still stops working: at once on the region that revoked it,
on every other region when the ``NOTIFY tokens`` of the revocation reaches
it, and after the TTL on a region that missed the notification.
"""

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from powerctl.region import auth
from powerctl.region.coordination import Coordinator
from powerctl.region.tokens import TokenStore
from tests.test_store import StoreTestCase

ALICE = auth.Principal(name="alice", role="operator", token_id=1)
BOB = auth.Principal(name="bob", role="viewer", token_id=2)


class RecentTokensTests(unittest.TestCase):
    def test_a_token_is_kept_ttl_seconds_from_its_look_up(self):
        recent = auth.RecentTokens(ttl=1.0)
        recent.put("a", ALICE, started=10.0, generation=recent.generation)
        self.assertIs(recent.get("a", 10.0), ALICE)
        self.assertIs(recent.get("a", 10.999), ALICE)
        self.assertIsNone(recent.get("a", 11.0))
        self.assertIsNone(recent.get("a", 10.5))  # expired entries are dropped
        self.assertIsNone(recent.get("b", 10.0))

    def test_forget_drops_one_token_by_id_or_every_token(self):
        recent = auth.RecentTokens(ttl=5.0)
        recent.put("a", ALICE, 0.0, recent.generation)
        recent.put("b", BOB, 0.0, recent.generation)
        recent.forget(ALICE.token_id)
        self.assertEqual((recent.get("a", 1.0), recent.get("b", 1.0)), (None, BOB))
        recent.forget()
        self.assertIsNone(recent.get("b", 1.0))

    def test_a_look_up_begun_before_a_revocation_is_not_kept(self):
        recent = auth.RecentTokens(ttl=5.0)
        generation = recent.generation  # a look-up starts ...
        recent.forget(ALICE.token_id)  # ... the revocation is heard meanwhile ...
        recent.put("a", ALICE, 0.0, generation)  # ... and its answer arrives
        self.assertIsNone(recent.get("a", 0.0))

    def test_the_oldest_token_goes_first_past_the_size(self):
        recent = auth.RecentTokens(ttl=5.0, size=2)
        for key in "abc":
            recent.put(key, ALICE, 0.0, recent.generation)
        self.assertEqual([recent.get(k, 1.0) for k in "abc"], [None, ALICE, ALICE])

    def test_a_ttl_of_zero_keeps_nothing(self):
        recent = auth.RecentTokens(ttl=0)
        recent.put("a", ALICE, 0.0, recent.generation)
        self.assertIsNone(recent.get("a", 0.0))


class TokenStoreCacheTests(StoreTestCase):
    """Two regions' token stores on one database, each with its own clock and cache."""

    def setUp(self):
        d = super().setUp()
        self.clock_a, self.clock_b = task.Clock(), task.Clock()
        self.a = TokenStore(self.pool, clock=self.clock_a)
        self.b = TokenStore(self.pool, clock=self.clock_b)
        return d

    def write(self, sql, *args):
        return self.pool.runOperation(sql, args or None)

    async def test_a_live_token_is_read_once_per_ttl(self):
        row, token = await self.a.create("alice", "operator", created_by="test")
        principal = await self.a.authenticate(token)
        self.assertEqual((principal.name, principal.token_id), ("alice", row["id"]))
        # revoked behind the stores' backs (no NOTIFY, no store): the cache
        # answers until the TTL is over, then the database does
        await self.write("UPDATE api_tokens SET revoked_at = now() WHERE id = %s", row["id"])
        self.clock_a.advance(auth.TOKEN_TTL - 0.01)
        self.assertEqual(await self.a.authenticate(token), principal)
        self.clock_a.advance(0.01)
        self.assertIsNone(await self.a.authenticate(token))
        self.assertIsNone(await self.a.authenticate(token))  # a refusal is never kept

    async def test_the_revoking_region_forgets_at_once_the_others_on_the_notification(self):
        row, token = await self.a.create("alice", "operator", created_by="test")
        for store in (self.a, self.b):
            self.assertIsNotNone(await store.authenticate(token))
        await self.a.revoke(row["id"], "test")
        self.assertIsNone(await self.a.authenticate(token))  # at once, no clock moved
        # b has not heard the NOTIFY yet: trusted at most until its TTL
        self.assertIsNotNone(await self.b.authenticate(token))
        self.b.notified(str(row["id"]))
        self.assertIsNone(await self.b.authenticate(token))

    async def test_an_unreadable_notification_forgets_every_token(self):
        _, token = await self.b.create("alice", "operator", created_by="test")
        self.assertIsNotNone(await self.b.authenticate(token))
        await self.write("UPDATE api_tokens SET revoked_at = now()")
        self.b.notified("not-an-id")
        self.assertIsNone(await self.b.authenticate(token))

    async def test_without_a_clock_every_request_reads_its_token(self):
        plain = TokenStore(self.pool)
        row, token = await plain.create("alice", "operator", created_by="test")
        self.assertIsNotNone(await plain.authenticate(token))
        await self.write("UPDATE api_tokens SET revoked_at = now() WHERE id = %s", row["id"])
        self.assertIsNone(await plain.authenticate(token))
        plain.notified("1")  # nothing to forget


class RevocationNotifyTests(StoreTestCase):
    write = TokenStoreCacheTests.write

    async def test_a_revocation_reaches_another_region_through_its_coordinator(self):
        """Region b listens as a region does (its Coordinator); region a revokes."""
        a, b = TokenStore(self.pool, clock=task.Clock()), TokenStore(self.pool, clock=task.Clock())
        row, token = await a.create("alice", "operator", created_by="test")
        self.assertIsNotNone(await b.authenticate(token))
        heard = defer.Deferred()

        def on_notify(channel, payload):
            if channel == "tokens":
                b.notified(payload)
                if not heard.called:
                    heard.callback(payload)

        coordinator = Coordinator(self.dsn, reactor, on_notify, jobs=lambda: defer.succeed(None),
                                  interval=3600.0)
        self.addCleanup(coordinator._close)
        await coordinator.tick()  # opens the listening connection
        await a.revoke(row["id"], "test")
        heard.addTimeout(30, reactor)  # a bound, not a measurement
        self.assertEqual(await heard, str(row["id"]))
        self.assertIsNone(await b.authenticate(token))


class _HeldPool:
    """A pool whose reads wait until the test answers them."""

    def __init__(self):
        self.reads = []

    def runQuery(self, sql, args):
        self.reads.append(defer.Deferred())
        return self.reads[-1]


class SharedLookupTests(unittest.TestCase):
    ROW = [(1, "alice", "operator", None)]

    def test_requests_arriving_together_share_one_read(self):
        pool = _HeldPool()
        store = TokenStore(pool, clock=task.Clock())
        answers = [defer.ensureDeferred(store.authenticate("pct_x")) for _ in range(3)]
        self.assertEqual(len(pool.reads), 1)
        pool.reads[0].callback(self.ROW)
        names = [self.successResultOf(a).name for a in answers]
        self.assertEqual(names, ["alice"] * 3)
        self.successResultOf(defer.ensureDeferred(store.authenticate("pct_x")))  # kept
        self.assertEqual(len(pool.reads), 1)

    def test_a_request_after_a_revocation_does_not_join_an_older_read(self):
        pool = _HeldPool()
        store = TokenStore(pool, clock=task.Clock())
        before = defer.ensureDeferred(store.authenticate("pct_x"))
        store.notified("1")  # the revocation is heard while that read is under way
        after = defer.ensureDeferred(store.authenticate("pct_x"))
        self.assertEqual(len(pool.reads), 2)
        pool.reads[0].callback(self.ROW)  # read before the revocation committed
        pool.reads[1].callback([])  # read after it
        self.assertEqual(self.successResultOf(before).name, "alice")
        self.assertIsNone(self.successResultOf(after))
        third = defer.ensureDeferred(store.authenticate("pct_x"))  # nothing was kept
        self.assertEqual(len(pool.reads), 3)
        pool.reads[2].callback([])
        self.assertIsNone(self.successResultOf(third))

    def test_a_failed_read_fails_every_waiter_and_keeps_nothing(self):
        pool = _HeldPool()
        store = TokenStore(pool, clock=task.Clock())
        answers = [defer.ensureDeferred(store.authenticate("pct_x")) for _ in range(2)]
        pool.reads[0].errback(RuntimeError("database gone"))
        for answer in answers:
            self.failureResultOf(answer, RuntimeError)
        defer.ensureDeferred(store.authenticate("pct_x"))
        self.assertEqual(len(pool.reads), 2)
