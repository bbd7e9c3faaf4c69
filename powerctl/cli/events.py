"""
The live event stream from the CLI side (``GET /v1/events``, issue 14).

* :class:`SseParser`: Server-Sent Events text to events, fed bytes as they
  come (pure, tested without sockets);
* :class:`EventTail`: one stream over treq, resumed with ``Last-Event-ID``
  after a dropped connection, so a reader misses nothing;
* :class:`OpWatch`: which of a set of operations are terminal, following
  the operation each coalesced into (pure);
* ``powerctl events [--after SEQ] [--cluster C]``: tails the stream;
* ``powerctl ops wait ID...`` and :func:`wait_ops` (``powerctl power
  --wait``): every operation followed through one stream, however many;
  polling (16 at a time) only when the stream is unavailable, and saying so.
"""

import json

import attrs
import treq
from twisted.internet import defer, error as neterror, protocol
from twisted.web import client

from powerctl.cli import EXIT_FAILURE, EXIT_OK, EXIT_TIMEOUT, Interrupted
from powerctl.cli import credentials, output
from powerctl.cli.client import ApiError, api_command, q
from powerctl.cli.driver import positive_float
from powerctl.power import TERMINAL_STATES

#: Operations polled at once when the stream is unavailable.
POLL_CONCURRENCY = 16


@attrs.frozen
class SseEvent:
    id: str = None
    event: str = "message"
    data: str = ""

    def json(self):
        return json.loads(self.data) if self.data else None


class SseParser:
    """
    The event-stream format: lines ``field: value``, an event ends at a
    blank line, ``:`` starts a comment, several ``data`` lines join with
    a newline.  ``last_id`` is the last ``id`` seen (what a reconnecting
    client sends as ``Last-Event-ID``).
    """

    def __init__(self):
        self._pending = b""
        self._fields = {}
        self._data = []
        self.last_id = None
        self.comments = []

    def feed(self, chunk):
        """The events completed by ``chunk`` (bytes)."""
        self._pending += chunk
        events = []
        while True:
            index = self._pending.find(b"\n")
            if index < 0:
                return events
            line = self._pending[:index].rstrip(b"\r").decode("utf-8", "replace")
            self._pending = self._pending[index + 1:]
            if not line:
                if "id" in self._fields:
                    self.last_id = self._fields["id"]
                if self._data:  # no data: nothing to dispatch (a bare retry, say)
                    events.append(SseEvent(id=self._fields.get("id", self.last_id),
                                           event=self._fields.get("event", "message"),
                                           data="\n".join(self._data)))
                self._fields, self._data = {}, []
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                del self.comments[:-10]
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                self._data.append(value)
            elif name in ("id", "event", "retry"):
                self._fields[name] = value


class _Body(protocol.Protocol):
    """A response body handed over chunk by chunk; ``done`` fires at its end."""

    def __init__(self, on_data, done):
        self.on_data = on_data
        self.done = done

    def dataReceived(self, data):
        self.on_data(data)

    def connectionLost(self, reason):
        if reason.check(client.ResponseDone):
            self.done.callback(None)
        else:
            self.done.errback(reason)


class StreamUnavailable(Exception):
    """The region has no event stream (an older region, or a refusal): poll instead."""


class EventTail:
    """
    Reads ``/v1/events`` and calls ``on_event(SseEvent)`` for each event;
    a dropped connection is resumed after ``Last-Event-ID`` (at most
    ``retries`` times in a row without an event in between).
    ``on_live()`` is called each time the region says the replay is over.
    """

    def __init__(self, api, on_event, after=None, cluster=None, on_live=None, retries=5):
        self.api = api
        self.on_event = on_event
        self.after = after
        self.cluster = cluster
        self.on_live = on_live
        self.retries = retries
        self._body = None
        self.stopped = False

    def stop(self):
        self.stopped = True
        if self._body is not None and self._body.transport is not None:
            self._body.transport.stopProducing()  # closes the connection

    async def run(self):
        """Until :meth:`stop` (or the region refuses: StreamUnavailable / ApiError)."""
        failures = 0
        while not self.stopped:
            try:
                got = await self._once()
            except (neterror.ConnectError, neterror.ConnectionLost, client.ResponseFailed,
                    neterror.ConnectionDone) as e:
                if self.stopped:
                    return
                failures += 1
                if failures > self.retries:
                    raise ApiError(f"the event stream broke: {e}", "unreachable") from None
                await self.api.sleep(min(5.0, 0.2 * 2 ** failures))
                continue
            if got:
                failures = 0
            elif not self.stopped:
                failures += 1
                if failures > self.retries:
                    raise ApiError("the event stream keeps closing", "unreachable")
                await self.api.sleep(min(5.0, 0.2 * 2 ** failures))

    async def _once(self):
        """One connection; whether it brought an event."""
        headers = {"Accept": ["text/event-stream"], **credentials.auth_headers(self.api.ctx.env)}
        if self.after is not None:
            headers["Last-Event-ID"] = [str(self.after)]
        params = {"cluster": self.cluster} if self.cluster else {}
        d = self.api.http.get(self.api.base + "/v1/events", headers=headers, params=params,
                              unbuffered=True)
        d.addTimeout(self.api.timeout, self.api.ctx.reactor)
        try:
            response = await d
        except defer.TimeoutError:
            raise ApiError(f"GET {self.api.base}/v1/events: no answer within "
                           f"{self.api.timeout:g}s", "timeout") from None
        if response.code in (404, 405):
            await treq.content(response)
            raise StreamUnavailable(f"the region has no event stream (HTTP {response.code})")
        ctype = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        if response.code >= 400 or not ctype.startswith(b"text/event-stream"):
            content = await treq.content(response)
            try:
                doc = json.loads(content)
                message = doc["error"]["message"]
                kind = doc["error"]["code"]
            except (ValueError, KeyError, TypeError):
                message, kind = f"HTTP {response.code}", "protocol"
            raise ApiError(message, kind, response.code)
        parser = SseParser()
        got = []

        def chunk(data):
            for event in parser.feed(data):
                if self.stopped:
                    return
                if event.event == "lost":
                    self.on_event(event)
                    continue
                if event.id is not None:
                    self.after = int(event.id)
                got.append(True)
                self.on_event(event)
            while parser.comments:
                if parser.comments.pop(0).startswith("live after") and self.on_live:
                    self.on_live()

        remove = self.api.ctx.on_interrupt(self.stop)
        done = defer.Deferred()
        self._body = _Body(chunk, done)
        response.deliverBody(self._body)
        try:
            await done
        except Exception:
            if not self.stopped:
                raise
        finally:
            remove()
            self._body = None
        if self.api.ctx.interrupted:
            raise Interrupted()
        return bool(got)


def add_commands(subparsers, parent):
    """Register ``events``; ``parent`` carries the API options."""
    p = subparsers.add_parser("events", parents=[parent],
                              help="tail the region's live event stream")
    p.add_argument("--after", type=int, metavar="SEQ",
                   help="first replay every event after SEQ (default: from now)")
    p.add_argument("--cluster", "-c", metavar="C", help="only cluster C's events")
    p.add_argument("--count", type=int, metavar="N",
                   help="stop after N events (default: until interrupted)")
    p.set_defaults(func=events_command)


def add_ops_wait(ops_group, parent):
    """Register ``ops wait ID...`` in the ``ops`` group."""
    p = ops_group.add_parser("wait", parents=[parent],
                             help="wait until operations are finished (live stream)")
    p.add_argument("ids", type=int, nargs="+", metavar="ID")
    p.add_argument("--timeout", type=positive_float, default=600.0, metavar="S",
                   help="give up after S seconds (default 600)")
    p.set_defaults(func=ops_wait)


def describe(event):
    """One line for an event."""
    doc = event.json() or {}
    if event.event == "op":
        op = doc.get("op") or {}
        extra = ""
        if op.get("coalesced_into"):
            extra = f" (joined {op['coalesced_into']})"
        elif op.get("superseded_by"):
            extra = f" (by {op['superseded_by']})"
        elif op.get("error"):
            extra = f": {op['error']}"
        return (f"{event.id} {output.when(doc.get('at')) or ''} op {op.get('id')} "
                f"{op.get('node')} {op.get('action')} {op.get('state')}{extra}")
    if event.event == "node":
        node = doc.get("node") or {}
        responsive = "" if node.get("responsive", True) else " non-responsive"
        return (f"{event.id} {output.when(doc.get('at')) or ''} node {node.get('name')} "
                f"{doc.get('change')}: power {node.get('power_state')} desired "
                f"{node.get('desired_state')}{responsive}")
    if event.event == "lost":
        return (f"warning: events after {doc.get('after')} up to {doc.get('pruned_upto')} "
                "were pruned from the journal; they cannot be replayed")
    return f"{event.id} {event.event} {event.data}"


@api_command
async def events_command(ctx, args, api):
    """``powerctl events [--after SEQ] [--cluster C] [--count N]``."""
    seen = [0]
    tail = None

    def on_event(event):
        if event.event == "lost":
            ctx.err(describe(event))
            return
        seen[0] += 1
        ctx.out(json.dumps({"seq": int(event.id), "type": event.event, **(event.json() or {})})
                if args.json else describe(event))
        if args.count is not None and seen[0] >= args.count:
            tail.stop()

    tail = EventTail(api, on_event, after=args.after, cluster=args.cluster)
    try:
        await tail.run()
    except StreamUnavailable as e:
        raise ApiError(str(e), "unsupported") from None
    return EXIT_OK


@attrs.define
class OpWatch:
    """
    Which of ``ids`` have ended, pure: fed operation documents (from the
    stream or from a read), it follows an operation that coalesced into
    another to that one, whose outcome is its own.  ``decided[id]`` is the
    terminal document of the operation that decided ``id``.
    """

    ids: list
    decided: dict = attrs.field(factory=dict)
    _target: dict = attrs.field(factory=dict)  # id -> the op id whose end decides it
    _ended: dict = attrs.field(factory=dict)  # op id -> its terminal document

    def __attrs_post_init__(self):
        for i in self.ids:
            self._target.setdefault(i, i)

    def targets(self):
        """The operation ids still awaited (what to read when polling)."""
        return sorted({self._target[i] for i in self.ids if i not in self.decided})

    def seen(self, op):
        """An operation document: answers the ids it decided now."""
        op_id = op.get("id")
        if op.get("state") not in TERMINAL_STATES:
            return []
        if op.get("coalesced_into") and op["coalesced_into"] != op_id:
            into = op["coalesced_into"]
            for i in self.ids:
                if self._target[i] == op_id:
                    self._target[i] = into
            if into in self._ended:
                return self.seen(self._ended[into])
            return []
        self._ended[op_id] = op
        done = []
        for i in self.ids:
            if i not in self.decided and self._target[i] == op_id:
                self.decided[i] = op
                done.append(i)
        return done

    def complete(self):
        return len(self.decided) == len(set(self.ids))


async def wait_ops(ctx, api, ops, deadline, on_done=None, poll_interval=1.0):
    """
    Wait until every operation of ``ops`` (documents with ``id``) is
    decided; answers ``{id: deciding document}`` (missing: timed out).
    Through the event stream, subscribed *before* the current state is
    read, so no ending is missed; by polling, 16 at a time, only if the
    stream is unavailable (said on stderr).
    """
    watch = OpWatch([op["id"] for op in ops])
    reported = set()

    def note(op):
        for i in watch.seen(op):
            if i not in reported:
                reported.add(i)
                if on_done is not None:
                    on_done(i, watch.decided[i])

    for op in ops:
        note(op)
    if watch.complete():
        return dict(watch.decided)
    live = defer.Deferred()
    finished = defer.Deferred()

    def on_event(event):
        if event.event == "op":
            note((event.json() or {}).get("op") or {})
            if watch.complete() and not finished.called:
                finished.callback(None)

    tail = EventTail(api, on_event, on_live=lambda: live.called or live.callback(None))
    running = defer.ensureDeferred(tail.run())
    try:
        first = await defer.DeferredList([live, running], fireOnOneCallback=True,
                                         fireOnOneErrback=True, consumeErrors=True)
        del first
        # Subscribed: read where each stands now (it may have ended before);
        # an operation that joined another leads to that one, read too.
        read = set()
        while True:
            unread = [t for t in watch.targets() if t not in read]
            if not unread:
                break
            for target in unread:
                read.add(target)
                note(await api.call("GET", f"/v1/power_ops/{q(target)}"))
        if not watch.complete():
            timeout = max(0.0, deadline - ctx.reactor.seconds())
            finished.addTimeout(timeout, ctx.reactor)
            await defer.DeferredList([finished, running], fireOnOneCallback=True,
                                     fireOnOneErrback=True, consumeErrors=True)
            if running.called and not finished.called:
                await running  # raises why the stream ended
    except defer.FirstError as e:
        failure = e.subFailure
        if failure.check(StreamUnavailable, ApiError) and not failure.check(Interrupted):
            if failure.check(ApiError) and failure.value.http_status in (401, 403):
                failure.raiseException()
            ctx.err(f"warning: the event stream is unavailable ({failure.getErrorMessage()}); "
                    f"polling instead, {POLL_CONCURRENCY} operations at a time")
            await _poll(ctx, api, watch, note, deadline, poll_interval)
        elif failure.check(defer.TimeoutError):
            pass
        else:
            failure.raiseException()
    finally:
        tail.stop()
        running.addErrback(lambda f: None)
    return dict(watch.decided)


async def _poll(ctx, api, watch, note, deadline, interval):
    """The fallback: read each awaited operation until decided, 16 at a time."""
    limit = defer.DeferredSemaphore(POLL_CONCURRENCY)
    while not watch.complete() and ctx.reactor.seconds() < deadline:
        targets = watch.targets()

        async def read(target):
            note(await api.call("GET", f"/v1/power_ops/{q(target)}"))

        await defer.gatherResults([limit.run(lambda t=t: defer.ensureDeferred(read(t)))
                                   for t in targets], consumeErrors=True)
        if not watch.complete():
            await api.sleep(min(interval, max(0.0, deadline - ctx.reactor.seconds())))


@api_command
async def ops_wait(ctx, args, api):
    """``powerctl ops wait ID... [--timeout S]``: exit 0 when all succeeded."""
    ops = [{"id": i} for i in dict.fromkeys(args.ids)]
    deadline = ctx.reactor.seconds() + args.timeout
    decided = await wait_ops(ctx, api, ops, deadline)
    rows, status = [], EXIT_OK
    for i in dict.fromkeys(args.ids):
        op = decided.get(i)
        if op is None:
            rows.append({"id": i, "state": None, "decided_by": None, "error": "timed out"})
            status = max(status, EXIT_TIMEOUT)
            continue
        error = None if op.get("state") == "succeeded" else (op.get("error") or op.get("state"))
        if error:
            status = max(status, EXIT_FAILURE)
        rows.append({"id": i, "state": op.get("state"), "decided_by": op.get("id"),
                     "error": error})
    if args.json:
        ctx.out(output.to_json(rows))
    else:
        ctx.out(output.table(rows, [("ID", "id"), ("STATE", "state"),
                                    ("DECIDED BY", "decided_by"), ("ERROR", "error")]))
    return status
