"""
The live event stream's logic without sockets or a database: the
replay/live merge (:class:`powerctl.region.events.EventMerge`), a
subscriber's bound on a slow client, the hub's reads, the SSE parser and
the operation watch of the CLI.  Randomised tests are seeded and print
their seed.
"""

import random

import psycopg2
from twisted.internet import defer, task
from twisted.logger import Logger, formatEvent
from twisted.trial import unittest

from powerctl.cli.events import OpWatch, SseParser
from powerctl.region.events import EventHub, EventMerge, Subscriber, replay, sse
from powerctl.region.store.events import Event


def ev(seq, cluster="c1", **data):
    return Event(seq=seq, type="op", at="2026-01-01T00:00:00+00:00", cluster=cluster,
                 data=data or {"op": {"id": seq, "state": "pending"}})


class Sink:
    def __init__(self):
        self.data = []
        self.closed = None

    def write(self, data):
        self.data.append(data)

    def close(self, reason):
        self.closed = reason or "finished"

    def seqs(self):
        parser = SseParser()
        return [int(e.id) for e in parser.feed(b"".join(self.data))]


class FakeEvents:
    """An EventStore in memory: ``committed`` events, read in order; each read waits for a step."""

    def __init__(self, events=(), pause=False):
        self.committed = list(events)
        self.pause = pause
        self.reads = []  # Deferreds a paused read waits on

    async def after(self, seq, limit=1000, clusters=None):
        snapshot = [e for e in self.committed if e.seq > seq
                    and (clusters is None or e.cluster in clusters)][:limit]
        if self.pause:
            d = defer.Deferred()
            self.reads.append(d)
            await d
        return snapshot

    async def last_seq(self):
        return max((e.seq for e in self.committed), default=0)

    async def pruned_upto(self):
        return 0


class FakeStore:
    def __init__(self, events):
        self.events = events


class MergeTests(unittest.TestCase):
    def test_replayed_and_buffered_events_go_out_once_in_order(self):
        merge = EventMerge(last=3)
        self.assertEqual(merge.live(ev(6)), [])
        self.assertEqual(merge.live(ev(7)), [])
        merge.page_started()
        out = merge.replayed([ev(4), ev(5), ev(6)])
        self.assertTrue(merge.page_complete())
        out += merge.caught_up()
        self.assertEqual([e.seq for e in out], [4, 5, 6, 7])
        self.assertEqual([e.seq for e in merge.live(ev(7)) + merge.live(ev(8))], [8])

    def test_nothing_at_or_before_the_resume_point(self):
        merge = EventMerge(last=10)
        out = merge.replayed([ev(9), ev(10)]) + merge.caught_up()
        self.assertEqual(out, [])

    def test_a_buffer_overflow_makes_the_replay_read_again(self):
        merge = EventMerge(last=0, limit=2)
        merge.page_started()
        for seq in (5, 6, 7):
            merge.live(ev(seq))
        self.assertFalse(merge.page_complete())
        merge.page_started()
        self.assertTrue(merge.page_complete())

    def test_random_interleavings_give_exactly_what_follows_the_resume_point(self):
        seed = random.randrange(2**32)
        print(f"seed {seed}")
        rng = random.Random(seed)
        for _ in range(200):
            total = rng.randrange(1, 60)
            after = rng.randrange(0, total + 1)
            committed = []  # the journal as the database shows it
            delivered = 0  # the hub's position
            merge = EventMerge(last=after, limit=rng.choice([3, 1000]))
            out = []
            seq = 0
            # Events commit and the hub delivers them while pages are read.
            while True:
                for _ in range(rng.randrange(0, 4)):
                    if seq < total:
                        seq += 1
                        committed.append(ev(seq))
                merge.page_started()
                page = rng.choice([2, 5, 1000])
                found = [e for e in committed if e.seq > merge.last][:page]
                for _ in range(rng.randrange(0, 3)):
                    if seq < total:
                        seq += 1
                        committed.append(ev(seq))
                while delivered < len(committed) and rng.random() < 0.7:
                    out += merge.live(committed[delivered])
                    delivered += 1
                out += merge.replayed(found)
                if len(found) < page and merge.page_complete():
                    break
            out += merge.caught_up()
            while seq < total:
                seq += 1
                committed.append(ev(seq))
            while delivered < len(committed):
                out += merge.live(committed[delivered])
                delivered += 1
            self.assertEqual([e.seq for e in out], list(range(after + 1, total + 1)),
                             f"seed {seed}")


class SubscriberTests(unittest.TestCase):
    def test_a_paused_client_queues_then_gets_everything_in_order(self):
        sink = Sink()
        sub = Subscriber(0, sink)
        sub.send(sub.merge.caught_up())
        sub.live(ev(1))
        sub.pauseProducing()
        sub.live(ev(2))
        sub.live(ev(3))
        self.assertEqual(sink.seqs(), [1])
        sub.resumeProducing()
        self.assertEqual(sink.seqs(), [1, 2, 3])

    def test_a_client_too_slow_is_closed_with_the_reason(self):
        sink = Sink()
        sub = Subscriber(0, sink, queue_limit=3)
        sub.send(sub.merge.caught_up())
        sub.pauseProducing()
        for seq in range(1, 6):
            sub.live(ev(seq))
        self.assertTrue(sub.closed)
        self.assertIn("too slow", sink.closed)
        self.flushLoggedErrors()

    def test_a_cluster_filter(self):
        sink = Sink()
        sub = Subscriber(0, sink, clusters={"c2"})
        sub.send(sub.merge.caught_up())
        sub.live(ev(1, cluster="c1"))
        sub.live(ev(2, cluster="c2"))
        self.assertEqual(sink.seqs(), [2])


class HubTests(unittest.TestCase):
    async def test_live_events_reach_every_subscriber_once_in_order(self):
        events = FakeEvents([ev(1)])
        clock = task.Clock()
        hub = EventHub(FakeStore(events), clock)
        await hub.start()
        sinks = [Sink() for _ in range(3)]
        subs = [Subscriber(hub.last, s) for s in sinks]
        for sub in subs:
            hub.subscribe(sub)
            sub.send(sub.merge.caught_up())
        events.committed += [ev(2), ev(3)]
        await hub.notified("2")
        await hub.notified("3")  # nothing new: nothing twice
        events.committed.append(ev(4))
        await hub.tick()  # the safety read
        for sink in sinks:
            self.assertEqual(sink.seqs(), [2, 3, 4])

    async def test_a_notification_during_a_read_makes_another_read(self):
        events = FakeEvents([], pause=True)
        hub = EventHub(FakeStore(events), task.Clock())
        hub.last = 0
        sink = Sink()
        sub = Subscriber(0, sink)
        hub.subscribe(sub)
        sub.send(sub.merge.caught_up())
        first = hub.notified()
        events.committed.append(ev(1))
        hub.notified()  # while the first read waits
        events.reads.pop(0).callback(None)  # the first read saw nothing
        await first
        self.assertEqual(len(events.reads), 1)  # a second read is under way
        events.reads.pop(0).callback(None)
        self.assertEqual(sink.seqs(), [1])

    async def test_keepalive_comments_on_an_idle_stream(self):
        clock = task.Clock()
        hub = EventHub(FakeStore(FakeEvents()), clock, keepalive=15)
        hub.last = 0
        sink = Sink()
        sub = Subscriber(0, sink, clock=clock)
        hub.subscribe(sub)
        clock.advance(10)
        await hub.tick()
        self.assertEqual(sink.data, [])
        clock.advance(6)
        await hub.tick()
        self.assertEqual(sink.data, [b": keep-alive\n\n"])

    async def test_replay_while_live_events_arrive(self):
        """The subscriber registered first; events committed during the replay are not lost."""
        events = FakeEvents([ev(i) for i in range(1, 6)], pause=True)
        hub = EventHub(FakeStore(events), task.Clock())
        hub.last = 5
        sink = Sink()
        sub = Subscriber(2, sink)
        hub.subscribe(sub)
        done = defer.ensureDeferred(replay(events, sub, page=2))
        events.reads.pop(0).callback(None)  # page 3, 4
        events.committed += [ev(6), ev(7)]
        reading = hub.notified()  # the hub reads 6, 7 while the replay runs
        events.reads.pop().callback(None)  # the hub's read, before the replay's
        await reading
        while not done.called:
            events.reads.pop(0).callback(None)
        await done
        events.committed.append(ev(8))
        reading = hub.notified()
        events.reads.pop(0).callback(None)
        await reading
        self.assertEqual(sink.seqs(), [3, 4, 5, 6, 7, 8])


class SseTests(unittest.TestCase):
    def test_events_split_anywhere_parse_the_same(self):
        text = b"retry: 2000\n: connected\n\n" + sse(ev(1)) + b"id: 2\nevent: x\ndata: a\ndata: b\n\n"
        for cut in range(len(text)):
            parser = SseParser()
            got = parser.feed(text[:cut]) + parser.feed(text[cut:])
            self.assertEqual([(e.id, e.event) for e in got], [("1", "op"), ("2", "x")])
            self.assertEqual(got[1].data, "a\nb")
            self.assertEqual(got[0].json()["op"]["id"], 1)
            self.assertEqual(parser.last_id, "2")


class OpWatchTests(unittest.TestCase):
    def test_an_operation_that_joined_another_is_decided_by_it(self):
        for order in ([0, 1], [1, 0]):
            watch = OpWatch([7, 8])
            docs = [{"id": 8, "state": "succeeded", "coalesced_into": 5},
                    {"id": 5, "state": "failed", "error": "x"}]
            for i in order:
                watch.seen(docs[i])
            self.assertEqual(watch.decided.get(8), docs[1])
            self.assertEqual(watch.targets(), [7])
            watch.seen({"id": 7, "state": "running"})
            self.assertFalse(watch.complete())
            watch.seen({"id": 7, "state": "succeeded"})
            self.assertTrue(watch.complete())


class FailingEvents(FakeEvents):
    def __init__(self, failures):
        super().__init__()
        self.failures = failures

    async def after(self, seq, limit=1000, clusters=None):
        if self.failures:
            self.failures -= 1
            raise psycopg2.OperationalError("server closed the connection unexpectedly")
        return await super().after(seq, limit, clusters)


class HubEdgeTests(unittest.TestCase):
    async def test_a_database_outage_is_logged_once_and_nothing_is_lost(self):
        events = FailingEvents(failures=3)
        hub = EventHub(FakeStore(events), task.Clock())
        logged = []
        hub.log = Logger(observer=logged.append)
        hub.last = 0
        sink = Sink()
        sub = Subscriber(0, sink)
        hub.subscribe(sub)
        sub.send(sub.merge.caught_up())
        events.committed.append(ev(1))
        for _ in range(4):
            await hub.tick()
        self.assertEqual(sink.seqs(), [1])
        levels = [e["log_level"].name for e in logged]
        self.assertEqual(levels, ["warn", "info"])
        self.assertIn("server closed", formatEvent(logged[0]))

    async def test_filtered_and_unfiltered_subscribers_share_a_batch(self):
        events = FakeEvents()
        hub = EventHub(FakeStore(events), task.Clock())
        hub.last = 0
        every, only_c2, replaying = Sink(), Sink(), Sink()
        subs = [Subscriber(0, every), Subscriber(0, only_c2, clusters={"c2"}),
                Subscriber(2, replaying)]
        for sub in subs:
            hub.subscribe(sub)
        for sub in subs[:2]:
            sub.send(sub.merge.caught_up())
        events.committed += [ev(1), ev(2, cluster="c2"), ev(3)]
        await hub.notified()
        subs[2].send(subs[2].merge.caught_up())  # its replay found nothing after 2
        self.assertEqual(every.seqs(), [1, 2, 3])
        self.assertEqual(only_c2.seqs(), [2])
        self.assertEqual(replaying.seqs(), [3])


class ReplayPacingTests(unittest.TestCase):
    async def test_a_paused_client_is_paced_not_disconnected_during_a_long_replay(self):
        events = FakeEvents([ev(i) for i in range(1, 51)], pause=True)
        sink = Sink()
        sub = Subscriber(0, sink, queue_limit=15)
        done = defer.ensureDeferred(replay(events, sub, page=10))
        events.reads.pop(0).callback(None)  # page 1..10 written
        sub.pauseProducing()  # the client's buffers are full
        events.reads.pop(0).callback(None)  # page 11..20 queued (10 waiting)
        self.assertEqual(events.reads, [])  # no further read while it is paused
        sub.resumeProducing()
        while not done.called:
            events.reads.pop(0).callback(None)
        await done
        self.assertFalse(sub.closed)
        self.assertEqual(sink.seqs(), list(range(1, 51)))
