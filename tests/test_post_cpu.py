"""
What the POST path's CPU cuts (issue 14, item 1) must not change, without
sockets or a database: the event hub reads nothing while nobody subscribes
and still gives a client resuming with Last-Event-ID exactly what it
missed; the listening connection's prompt NOTIFY dispatch logs an
observer's failure and still runs the others; the request deadline, with
one timer per connection, still applies to a connection's later requests.
"""

import json

from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.trial import unittest
from twisted.web import resource

from powerctl.region import coordination, http
from powerctl.region.events import EventHub, EventStream, Subscriber

from tests.test_events import FakeEvents, FakeStore, Sink, ev


class CountingEvents(FakeEvents):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.after_calls = 0

    async def after(self, seq, limit=1000, clusters=None):
        self.after_calls += 1
        return await super().after(seq, limit=limit, clusters=clusters)


class IdleHubTests(unittest.TestCase):
    async def test_nobody_subscribed_nothing_read(self):
        events = CountingEvents([ev(1), ev(2)])
        hub = EventHub(FakeStore(events), task.Clock())
        await hub.start()
        self.assertEqual(hub.last, 2)
        events.committed.append(ev(3))
        await hub.notified("3")
        await hub.tick()
        self.assertEqual(events.after_calls, 0)
        self.assertIsNone(hub.last)  # forgotten: the next subscriber has it read afresh

    async def _resume_after_idle(self, release_hub_first):
        events = CountingEvents([ev(i) for i in range(1, 6)], pause=True)
        clock = task.Clock()
        hub = EventHub(FakeStore(events), clock)
        await hub.start()
        await hub.notified()  # idle: position forgotten
        self.assertIsNone(hub.last)
        stream = EventStream(hub, FakeStore(events), clock)
        sink = Sink()
        sub = Subscriber(2, sink)  # Last-Event-ID: 2
        hub.subscribe(sub)
        started = defer.ensureDeferred(stream._start(sub, 2))
        self.assertEqual(hub.last, 5)  # read before the replay's first page
        # committed while the replay's first read is under way
        events.committed.append(ev(6))
        reading = hub.notified()
        replay_read, hub_read = events.reads
        del events.reads[:]
        for d in ((hub_read, replay_read) if release_hub_first else (replay_read, hub_read)):
            d.callback(None)
        await reading
        while not started.called:
            events.reads.pop(0).callback(None)
        await started
        events.committed.append(ev(7))
        reading = hub.notified()
        events.reads.pop(0).callback(None)
        await reading
        self.assertEqual(sink.seqs(), [3, 4, 5, 6, 7])

    async def test_a_client_resuming_after_an_idle_spell_misses_nothing(self):
        await self._resume_after_idle(release_hub_first=True)
        await self._resume_after_idle(release_hub_first=False)

    async def test_a_client_from_now_after_an_idle_spell_gets_only_new_events(self):
        events = FakeEvents([ev(1), ev(2)])
        clock = task.Clock()
        hub = EventHub(FakeStore(events), clock)
        await hub.notified()
        events.committed.append(ev(3))
        stream = EventStream(hub, FakeStore(events), clock)
        sink = Sink()
        sub = Subscriber(hub.last or 0, sink)
        hub.subscribe(sub)
        await stream._start(sub, None)
        events.committed.append(ev(4))
        await hub.notified()
        self.assertEqual(sink.seqs(), [4])

    async def test_concurrent_starts_share_one_position(self):
        events = FakeEvents([ev(1)])
        hub = EventHub(FakeStore(events), task.Clock())
        gate = defer.Deferred()
        reads = []

        async def last_seq():
            reads.append(1)
            await gate
            return max(e.seq for e in events.committed)

        events.last_seq = last_seq
        first, second = hub.start(), hub.start()
        events.committed.append(ev(2))
        gate.callback(None)
        await first
        await second
        self.assertEqual((hub.last, len(reads)), (2, 1))


class FakePg:
    def __init__(self, notifies):
        self.notifies = list(notifies)
        self.closed = False


class Notify:
    def __init__(self, channel, payload):
        self.channel, self.payload = channel, payload


class PromptNotifyTests(unittest.TestCase):
    def test_every_observer_runs_and_failures_are_logged(self):
        logged = []
        conn = coordination.PromptConnection(reactor=task.Clock())
        conn.log = Logger(observer=logged.append)
        conn._connection = FakePg([Notify("events", "1"), Notify("power_ops", "7")])
        seen = []

        def broken(notify):
            raise RuntimeError("bug")

        async def failing(notify):
            raise ValueError("async bug")

        conn.addNotifyObserver(broken)
        conn.addNotifyObserver(failing)
        conn.addNotifyObserver(lambda n: seen.append((n.channel, n.payload)))
        conn.checkForNotifies()
        self.assertEqual(seen, [("events", "1"), ("power_ops", "7")])
        self.assertEqual(conn._connection.notifies, [])
        failures = sorted(type(e["log_failure"].value).__name__ for e in logged)
        self.assertEqual(failures, ["RuntimeError"] * 2 + ["ValueError"] * 2)


class _Ok(resource.Resource):
    isLeaf = True

    def render(self, request):
        return b"ok"


class DeadlineTests(unittest.TestCase):
    def test_a_later_request_of_a_connection_has_its_own_deadline(self):
        clock = task.Clock()
        site = http.Site(_Ok(), reactor=clock, request_timeout=30.0, idle_timeout=600.0)
        channel = site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"200 OK", transport.value())
        transport.clear()
        clock.advance(45)  # idle between requests: no deadline runs
        self.assertFalse(transport.disconnecting)
        channel.dataReceived(b"GET / HTTP/1.1\r\n")  # the next request starts its clock
        clock.advance(29)
        self.assertFalse(transport.disconnecting)
        clock.advance(2)
        self.assertIn(b"408 Request Timeout", transport.value())
        self.assertTrue(transport.disconnecting)


class _Logged:
    """What an access log line reads from a request."""

    def __init__(self, peer, uri=b"/v1/nodes/n1/power", agent=None, referrer=None,
                 method=b"POST", code=202, sent=120):
        self.peer, self.uri, self.method, self.code = peer, uri, method, code
        self.clientproto, self.sentLength = b"HTTP/1.1", sent
        self.headers = {b"user-agent": agent, b"referer": referrer}

    def getClientAddress(self):
        return self.peer

    def getHeader(self, name):
        return self.headers.get(name)


class AccessLogTests(unittest.TestCase):
    def test_the_same_line_as_twisted_webs_combined_log(self):
        from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
        from twisted.web import http as web_http

        v4 = IPv4Address("TCP", "127.0.0.1", 5000)
        cases = [
            _Logged(v4),
            _Logged(v4, agent=b"treq/22 (x; y)", referrer=b"http://a/b?c=d&e"),
            _Logged(IPv6Address("TCP", "::1", 5000), sent=0, code=500),
            _Logged(v4, agent=b'say "hi"'), _Logged(v4, agent=b"it's"),
            _Logged(v4, agent=b"back\\slash"), _Logged(v4, uri=b"/v1/nodes/\xc3\xa9"),
            _Logged(v4, uri=b"/\x00\x7f\n"), _Logged(UNIXAddress(b"/tmp/s")),
            _Logged(v4, method=b"G'ET"),
        ]
        for request in cases:
            self.assertEqual(http.access_line("[04/Dec/2026:22:00:00 +0000]", request),
                             web_http.combinedLogFormatter("[04/Dec/2026:22:00:00 +0000]",
                                                           request))


class AnswerTests(unittest.TestCase):
    def test_a_json_answer_says_its_length(self):
        from twisted.web.test.requesthelper import DummyRequest

        from powerctl.region.api import Api

        request = DummyRequest([b"v1"])
        Api.write(None, request, (202, {"id": 1, "live_pserv": False, "warning": "é"},
                                  [("Location", "/v1/power_ops/1")]))
        body = b"".join(request.written)
        self.assertEqual(json.loads(body), {"id": 1, "live_pserv": False, "warning": "é"})
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-length"),
                         [str(len(body)).encode()])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"),
                         [b"application/json"])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"location"),
                         [b"/v1/power_ops/1"])
        self.assertEqual((request.responseCode, request.finished), (202, 1))
