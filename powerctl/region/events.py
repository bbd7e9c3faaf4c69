"""
The live event stream, ``GET /v1/events`` (Server-Sent Events).

Every region streams every change, whichever region made it: the journal
of events (:mod:`powerctl.region.store.events`, filled by triggers and
numbered at commit in commit order) is announced by ``NOTIFY events``;
each region's :class:`EventHub` then reads what is new, in order, once,
and hands it to its subscribers.

A client resumes with ``Last-Event-ID`` (or ``?after=``) and gets exactly
what it missed, then the live events, in order, without gaps or
duplicates.  The race between the replay (read from the journal) and the
live tail is closed by :class:`EventMerge`: the subscriber is registered
*before* the replay starts, live events are buffered while it runs, and
the two are merged by sequence number.  That logic is pure (no I/O) and
tested without sockets.

A slow client is bounded: what it has not taken is queued up to
``queue_limit`` events; past that it is disconnected, with the reason
logged (it resumes from its ``Last-Event-ID``, losing nothing).
"""

import collections
import json

import attrs
from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from powerctl.deferreds import when_fired
from powerctl.region import auth
from powerctl.region.coordination import DATABASE_GONE
from powerctl.region.errors import InvalidInput
from powerctl.region.store.events import check_seq

#: Events fetched from the journal per query (hub and replay).
PAGE = 1000
#: Events a subscriber may have waiting (not yet taken by its client, or
#: buffered while its replay runs) before it is disconnected.
QUEUE_LIMIT = 10_000
#: Seconds between keep-alive comments on an idle stream.
KEEPALIVE = 15.0
#: Seconds between the hub's safety reads (a NOTIFY lost with a dropped
#: listening connection is made up for within this time).
POLL = 1.0
#: Seconds a browser waits before reconnecting (the ``retry:`` field).
RETRY_MS = 2000


def sse(event):
    """One event as Server-Sent Events text: ``id``, ``event`` and one ``data`` line."""
    if event.wire is not None:
        return event.wire
    data = json.dumps(event.as_json(), separators=(",", ":"))
    return f"id: {event.seq}\nevent: {event.type}\ndata: {data}\n\n".encode("utf-8")


def comment(text):
    """An SSE comment line (ignored by clients; keeps proxies and sockets alive)."""
    return f": {text}\n\n".encode("utf-8")


@attrs.define
class EventMerge:
    """
    The replay/live merge of one subscriber, pure logic.

    ``last`` is the number of the last event given out.  While the replay
    runs (``replaying``), :meth:`live` buffers; :meth:`replayed` gives out
    a page read from the journal; :meth:`caught_up` ends the replay and
    gives out the buffer.  Anything at or below ``last`` is dropped, so an
    event both replayed and buffered goes out once.

    The buffer is bounded by ``limit``: past it, it is emptied and the
    replay must read again (:meth:`page_complete` says False), because the
    journal still has everything the buffer lost.
    """

    last: int
    limit: int = QUEUE_LIMIT
    replaying: bool = True
    _buffer: list = attrs.field(factory=list)
    _overflowed: bool = False

    def live(self, event):
        """A live event: the events to give out now (none while replaying)."""
        if self.replaying:
            if len(self._buffer) >= self.limit:
                self._buffer.clear()
                self._overflowed = True
            self._buffer.append(event)
            return []
        return self._fresh([event])

    def page_started(self):
        """A replay read is about to start (buffer losses before it do not matter)."""
        self._overflowed = False

    def replayed(self, events):
        """A page of the journal (in order): the events to give out."""
        return self._fresh(events)

    def page_complete(self):
        """Whether the buffer holds every live event since the last page started."""
        return not self._overflowed

    def caught_up(self):
        """End the replay: the buffered events not given out yet."""
        self.replaying = False
        buffered, self._buffer = self._buffer, []
        return self._fresh(buffered)

    def _fresh(self, events):
        out = []
        for event in events:
            if event.seq > self.last:
                out.append(event)
                self.last = event.seq
        return out


@implementer(IPushProducer)
class Subscriber:
    """
    One client of the stream: its filter (``clusters``, None for all), its
    merge, and the bytes waiting for it while its connection is paused.

    :param sink: has ``write(bytes)`` and ``close(reason)``.
    """

    log = Logger()

    def __init__(self, after, sink, clusters=None, queue_limit=QUEUE_LIMIT, name="",
                 clock=None):
        self.clock = clock
        self.merge = EventMerge(after, limit=queue_limit)
        self.sink = sink
        self.clusters = None if clusters is None else frozenset(clusters)
        self.queue_limit = queue_limit
        self.name = name
        self.paused = False
        self.closed = False
        self.waiting = collections.deque()
        self.waiting_events = 0
        self.last_write = None
        self._drain_waiters = []

    def wants(self, event):
        return self.clusters is None or event.cluster in self.clusters

    def live(self, event):
        self.live_many([event])

    def live_many(self, events, wire=None):
        """
        A batch of live events (in order), written at once; ``wire``, when
        given, is the whole batch encoded: a subscriber that takes every
        event of it (no filter, not replaying, all new) writes it as is.
        """
        if self.closed or not events:
            return
        if (wire is not None and self.clusters is None and not self.merge.replaying
                and events[0].seq > self.merge.last):
            self.merge.last = events[-1].seq
            self.write(wire, len(events))
            return
        out = []
        for event in events:
            if self.wants(event):
                out.extend(self.merge.live(event))
        self.send(out)

    def send(self, events):
        if events:
            self.write(b"".join(sse(e) for e in events), len(events))

    def write(self, data, events=0):
        """Bytes for the client (holding ``events`` events), queued while it is paused."""
        if self.closed:
            return
        if self.paused:
            self.waiting.append(data)
            self.waiting_events += events
            if self.waiting_events > self.queue_limit:
                self.close(f"too slow: more than {self.queue_limit} events waiting")
            return
        self._out(data)

    def _out(self, data):
        if self.clock is not None:
            self.last_write = self.clock.seconds()
        self.sink.write(data)

    def drained(self):
        """Fires once the client takes data again (at once unless paused): replay pacing."""
        if not self.paused or self.closed:
            return defer.succeed(None)
        d = defer.Deferred()
        self._drain_waiters.append(d)
        return d

    def _wake(self):
        waiters, self._drain_waiters = self._drain_waiters, []
        for d in waiters:
            d.callback(None)

    def close(self, reason=None):
        if self.closed:
            return
        self.closed = True
        self.waiting.clear()
        self._wake()
        if reason is not None:
            self.log.warn("event stream {name}: closed: {reason}", name=self.name,
                          reason=reason)
        self.sink.close(reason)

    # IPushProducer: the connection says when its buffers are full.
    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        while self.waiting and not self.paused and not self.closed:
            self._out(self.waiting.popleft())
        if not self.waiting:
            self.waiting_events = 0
        if not self.paused:
            self._wake()

    def stopProducing(self):
        self.closed = True
        self.waiting.clear()
        self._wake()


async def replay(events, subscriber, page=PAGE):
    """
    Give ``subscriber`` what the journal (``events``, an EventStore) has
    after its ``merge.last``, page by page as the client takes them, then
    its buffered live events.  The subscriber must already be registered
    with the hub.
    """
    merge = subscriber.merge
    while not subscriber.closed:
        # A client slower than the journal is paced, not disconnected: the
        # next page is read once it has taken the last one.
        await subscriber.drained()
        if subscriber.closed:
            return
        merge.page_started()
        found = await events.after(merge.last, limit=page, clusters=subscriber.clusters)
        subscriber.send(merge.replayed(found))
        if len(found) < page and merge.page_complete():
            break
    subscriber.send(merge.caught_up())


class EventHub(TimerService):
    """
    This region's one reader of the journal: on every ``NOTIFY events``
    (:meth:`notified`) and every ``poll`` seconds it reads the events
    after the last it saw, in order, and gives each to every subscriber.
    One read at a time; a notification during a read makes another.
    Also sends keep-alive comments to idle subscribers.

    With nobody subscribed it reads nothing (a busy region would otherwise
    read and encode every event of every request for no one) and forgets
    its position (``last`` None).  The next subscriber has it read the
    newest number afresh (:meth:`start`) *before* its replay reads the
    journal, so whatever the replay does not see is above that number and
    comes live: nothing is missed.  ``last`` only ever jumps forward in
    :meth:`start`, and only from None.
    """

    log = Logger()

    def __init__(self, store, clock, poll=POLL, keepalive=KEEPALIVE):
        super().__init__(poll, self.tick)
        self.clock = clock
        self.store = store
        self.keepalive = keepalive
        self.last = None
        self.subscribers = set()
        self._reading = None
        self._starting = None
        self._start_waiters = []
        self._again = False
        self._down = False
        self._stopping = False
        self._replays = set()

    def startService(self):
        self._stopping = False
        super().startService()

    def stopService(self):
        """
        End every stream (clients reconnect to another region) and stop
        reading; fires once the read under way is over (the database pool
        must outlive it).
        """
        self._stopping = True
        for subscriber in list(self.subscribers):
            subscriber.close()
        self.subscribers.clear()
        stopped = super().stopService() if self.running else defer.succeed(None)
        busy = [d for d in [self._reading, self._starting, *self._replays] if d is not None]
        if busy:
            stopped.addCallback(lambda _: defer.DeferredList(
                [when_fired(d) for d in busy], consumeErrors=True))
        return stopped

    def track(self, d):
        """Remember a subscriber's replay until it ends (stopping waits for it)."""
        self._replays.add(d)
        d.addBoth(lambda result: (self._replays.discard(d), result)[1])
        return d

    def subscribe(self, subscriber):
        if subscriber.last_write is None:
            subscriber.last_write = self.clock.seconds()
        self.subscribers.add(subscriber)

    def unsubscribe(self, subscriber):
        self.subscribers.discard(subscriber)

    def notified(self, payload=None):
        """A NOTIFY events arrived (any region's commit): read what is new."""
        return self.read()

    def tick(self):
        now = self.clock.seconds()
        for subscriber in list(self.subscribers):
            if subscriber.last_write is not None and \
                    now - subscriber.last_write >= self.keepalive:
                subscriber.write(comment("keep-alive"))
                subscriber.last_write = now
        return self.read()

    def read(self):
        """Read and hand out what is new; fires when this read (or the one under way) ends."""
        if self._stopping:
            return defer.succeed(None)
        if self._reading is not None:
            self._again = True
            return defer.succeed(None)
        if not self.subscribers:
            # Nobody to hand events to: nothing to read.  The position is
            # forgotten (unless a start is under way, which sets it anew).
            if self._starting is None:
                self.last = None
            return defer.succeed(None)
        d = self._reading = defer.ensureDeferred(self._read())
        d.addCallbacks(self._read_ok, self._read_failed)
        d.addBoth(self._read_done)
        return d

    def _read_ok(self, _):
        if self._down:
            self._down = False
            self.log.info("reading the event journal again (from event {seq})", seq=self.last)

    def _read_failed(self, failure):
        """A database outage is logged once (not every second); anything else is a bug."""
        if failure.check(*DATABASE_GONE):
            if not self._down:
                self._down = True
                self.log.warn("cannot read the event journal ({why}); streams wait for the "
                              "database and lose nothing", why=failure.getErrorMessage())
            return
        self.log.failure("reading the event journal", failure)

    def _read_done(self, result):
        self._reading = None
        if self._again:
            self._again = False
            self.read()
        return result

    def start(self):
        """
        Start from the newest event (a region streams what happens from
        now) unless the hub has a position; concurrent callers share one
        read, so they all see one position.
        """
        if self.last is not None:
            return defer.succeed(None)
        waiter = defer.Deferred()
        self._start_waiters.append(waiter)
        if self._starting is None:
            self._starting = defer.ensureDeferred(self.store.events.last_seq())
            self._starting.addBoth(self._started)
        return waiter

    def _started(self, result):
        """The newest number (or why it could not be read), to every caller of start."""
        self._starting = None
        waiters, self._start_waiters = self._start_waiters, []
        failed = isinstance(result, Failure)
        if not failed and self.last is None:
            self.last = result
        for waiter in waiters:
            if failed:
                waiter.errback(result)
            else:
                waiter.callback(None)

    async def _read(self):
        if self.last is None:
            await self.start()
        while True:
            found = await self.store.events.after(self.last, limit=PAGE)
            if found:
                # encoded once for every subscriber, written in one go to each
                found = [attrs.evolve(e, wire=sse(e)) for e in found]
                wire = b"".join(e.wire for e in found)
                self.last = found[-1].seq
                for subscriber in list(self.subscribers):
                    if subscriber.closed:
                        self.subscribers.discard(subscriber)
                        continue
                    subscriber.live_many(found, wire)
            if len(found) < PAGE or self._stopping:
                return


@attrs.frozen
class Streaming:
    """An API answer that is a stream: ``start()`` takes the request over."""

    start: object


class _RequestSink:
    """Where a subscriber's bytes go: the HTTP response."""

    def __init__(self, request, log):
        self.request = request
        self.log = log

    def write(self, data):
        self.request.write(data)

    def close(self, reason):
        if reason is not None and self.request.channel is not None:
            # A slow client: drop the connection at once (its buffers are full).
            transport = self.request.channel.transport
            getattr(transport, "abortConnection", transport.loseConnection)()
            return
        if not self.request.finished and self.request.channel is not None:
            self.request.finish()


class EventStream:
    """
    The ``GET /v1/events`` route (:meth:`routes`, added to the API) and
    the resource of the status page's stream (:meth:`resource`).

    Query parameters: ``after`` (resume after this number; the
    ``Last-Event-ID`` header wins when both are given) and ``cluster``
    (only that cluster's events; a cluster-scoped token only ever gets its
    own clusters').
    """

    log = Logger()

    def __init__(self, hub, store, clock, queue_limit=QUEUE_LIMIT):
        self.hub = hub
        self.store = store
        self.clock = clock
        self.queue_limit = queue_limit

    def routes(self):
        return (("events", {"GET": self.stream_events}),)

    async def stream_events(self, request):
        """The API handler (role viewer; list scope): answers a :class:`Streaming`."""
        from powerctl.region.api import HttpError, _query

        args = _query(request, ("after", "cluster"))
        try:
            after = self.position(request, args)
        except InvalidInput as e:
            raise HttpError(400, "invalid_input", str(e)) from None
        clusters = None
        principal = auth.principal_of(request)
        if principal is not None and principal.clusters is not None:
            clusters = set(principal.clusters)
        if args.get("cluster"):
            clusters = {args["cluster"]} if clusters is None else clusters & {args["cluster"]}
        name = principal.name if principal is not None else "anonymous"
        return 200, Streaming(lambda: self.open(request, after, clusters, name))

    @staticmethod
    def position(request, args):
        """Where to resume: Last-Event-ID, else ``?after=``, else None (from now)."""
        header = request.getHeader("last-event-id")
        if header is not None and header.strip():
            return check_seq("Last-Event-ID", header.strip())
        if args.get("after") not in (None, ""):
            return check_seq("after", args["after"])
        return None

    def open(self, request, after, clusters, name):
        """Take ``request`` over: headers, then the replay, then live events."""
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Accel-Buffering", b"no")
        if request.method == b"HEAD":  # the headers say what GET would stream
            request.finish()
            return defer.succeed(None)
        subscriber = Subscriber(after if after is not None else (self.hub.last or 0),
                                _RequestSink(request, self.log), clusters=clusters,
                                queue_limit=self.queue_limit, clock=self.clock,
                                name=f"{name}@{getattr(request.getClientAddress(), 'host', '?')}")
        request.registerProducer(subscriber, True)
        request.notifyFinish().addBoth(lambda _: self._gone(subscriber))
        request.write(f"retry: {RETRY_MS}\n".encode() + comment("connected"))
        self.hub.subscribe(subscriber)
        d = defer.ensureDeferred(self._start(subscriber, after))
        d.addErrback(self._failed, subscriber)
        return self.hub.track(d)

    async def _start(self, subscriber, after):
        if self.hub.last is None:
            # An idle hub has no position: it is read now, after the
            # subscriber was registered and before the replay reads, so
            # what the replay does not see comes live (EventHub).
            await self.hub.start()
            if after is None:
                subscriber.merge.last = max(subscriber.merge.last, self.hub.last or 0)
        if after is None:
            subscriber.send(subscriber.merge.caught_up())
        else:
            pruned = await self.store.events.pruned_upto()
            if after < pruned:
                subscriber.write(
                    b"event: lost\ndata: " + json.dumps(
                        {"after": after, "pruned_upto": pruned}).encode() + b"\n\n")
            await replay(self.store.events, subscriber)
        subscriber.write(comment(f"live after {subscriber.merge.last}"))

    def _failed(self, failure, subscriber):
        self.log.failure("event stream {name}: the replay failed; closing it", failure,
                         name=subscriber.name)
        subscriber.close("the replay failed")

    def _gone(self, subscriber):
        subscriber.closed = True
        self.hub.unsubscribe(subscriber)

    def resource(self):
        """A twisted.web leaf streaming every cluster's events (for the status page)."""
        return _PageStream(self)


class _PageStream(resource.Resource):
    """``GET /events``: the stream for the status page (behind its login door)."""

    isLeaf = True

    def __init__(self, stream):
        super().__init__()
        self.stream = stream

    def render_GET(self, request):
        args = {k.decode("utf-8", "replace"): v[0].decode("utf-8", "replace")
                for k, v in request.args.items() if v}
        try:
            after = self.stream.position(request, args)
        except InvalidInput as e:
            request.setResponseCode(400)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return str(e).encode("utf-8") + b"\n"
        self.stream.open(request, after, None, "status page")
        return server.NOT_DONE_YET
