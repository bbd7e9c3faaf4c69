"""
``GET /v1/events`` end to end: two regions on one PostgreSQL, a pserv
connected to region A only, simulated Redfish nodes, and stream clients
on region B.  What a client receives is compared with the journal of
events itself: the same events, in the same order, none missing, none
twice -- live, and after a reconnection with ``Last-Event-ID``.
"""

import json

import psycopg2
import treq
from twisted.internet import defer, protocol
from twisted.trial import unittest
from twisted.web.client import ResponseDone

from powerctl.cli.events import SseParser
from powerctl.region.tokens import create_token_sync
from tests.pg import DatabaseMixin
from tests.system import SystemMixin, free_port, wait_until


def journal(dsn, after=0, clusters=None, upto=None):
    """
    The journal as the database has it: [(seq, type, data)], after
    ``after`` and up to ``upto`` (a client's last event: a node's state
    may still be committed after its operation ended).
    """
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT seq, type, cluster, data FROM events WHERE seq > %s"
                        " ORDER BY seq", (after,))
            rows = cur.fetchall()
    finally:
        conn.close()
    return [(s, t, d) for s, t, c, d in rows
            if (clusters is None or c in clusters) and (upto is None or s <= upto)]


class StreamClient(protocol.Protocol):
    """One SSE connection: ``events`` as parsed, ``live`` fires once the replay is over."""

    def __init__(self):
        self.parser = SseParser()
        self.events = []
        self.live = defer.Deferred()
        self.closed = defer.Deferred()

    def dataReceived(self, data):
        self.events.extend(self.parser.feed(data))
        if not self.live.called and any(c.startswith("live after")
                                        for c in self.parser.comments):
            self.live.callback(None)

    def connectionLost(self, reason):
        self.closed.callback(reason.check(ResponseDone))

    def stop(self):
        self.transport.stopProducing()
        return self.closed

    def seqs(self):
        return [int(e.id) for e in self.events]


class EventStreamTests(SystemMixin, DatabaseMixin, unittest.TestCase):
    nodes = ("node1", "node2", "node3")

    async def connect(self, api, token=None, last_event_id=None, after=None, status=200):
        headers = {b"Authorization": [f"Bearer {token or self.token}".encode()]}
        if last_event_id is not None:
            headers[b"Last-Event-ID"] = [str(last_event_id).encode()]
        params = {"after": str(after)} if after is not None else {}
        response = await treq.get(api + "/v1/events", headers=headers, params=params,
                                  pool=self.http, unbuffered=True)
        self.assertEqual(response.code, status)
        if status != 200:
            return json.loads(await treq.content(response))
        self.assertEqual(response.headers.getRawHeaders(b"content-type")[0],
                         b"text/event-stream; charset=utf-8")
        client = StreamClient()
        response.deliverBody(client)
        self.addCleanup(lambda: client.closed.called or client.stop())
        await client.live
        return client

    def journal(self, after=0, clusters=None, upto=None):
        return journal(self.dsn, after, clusters, upto)

    def last_seq(self):
        rows = self.journal()
        return rows[-1][0] if rows else 0

    @staticmethod
    def received(client):
        return [(int(e.id), e.event, {k: v for k, v in json.loads(e.data).items()
                                      if k not in ("seq", "type", "at", "cluster")})
                for e in client.events]

    async def two_regions(self):
        await self.start_region("region-a")
        port = free_port()
        other = await self.start_region("region-b", f"tcp:{port}:interface=127.0.0.1",
                                        main=False)
        await self.start_pserv("pserv-a", poll_interval=3600)  # dials region A only
        await wait_until(self._pserv_connected)
        for name in self.nodes:
            await self.add_node(name)
        return other

    async def _pserv_connected(self):
        return "pserv-a" in await self.connected_pservs()

    async def until_received(self, client, after=0):
        async def caught_up():
            return client.seqs()[-1:] == [self.last_seq()] and self.last_seq() > after

        await wait_until(caught_up, timeout=20)

    async def test_region_b_streams_the_events_of_requests_made_through_region_a(self):
        b = await self.two_regions()
        start = self.last_seq()
        client = await self.connect(b.api, after=start)
        ops = [await self.power(n, a) for n, a in
               (("node1", "on"), ("node2", "on"), ("node3", "on"), ("node1", "off"))]
        for op in ops:
            await self.wait_op(op["id"])
        await self.until_received(client, start)
        self.assertEqual(self.received(client), self.journal(start, upto=client.seqs()[-1]))
        self.assertGreaterEqual(len(client.events), 3 * len(ops))
        # every operation's life, in order, as the stream told it
        for op in ops:
            states = [e[2]["op"]["state"] for e in self.received(client)
                      if e[1] == "op" and e[2]["op"]["id"] == op["id"]]
            self.assertEqual(states[0], "pending")
            self.assertIn(states[-1], ("succeeded", "superseded", "failed", "cancelled"))
        seqs = client.seqs()
        self.assertEqual(seqs, sorted(set(seqs)))
        # node events too: node1 was switched on then off
        node1 = [e[2]["node"] for e in self.received(client)
                 if e[1] == "node" and e[2]["node"]["name"] == "node1"]
        self.assertEqual(node1[-1]["desired_state"], "off")

    async def test_a_client_reconnecting_with_last_event_id_gets_exactly_what_it_missed(self):
        b = await self.two_regions()
        start = self.last_seq()
        first = await self.connect(b.api, after=start)
        op = await self.power("node1", "on")
        await self.wait_op(op["id"])
        await self.until_received(first, start)
        await first.stop()
        seen = first.seqs()[-1]
        # while it is away: more changes, through region A
        ops = [await self.power("node2", "on"), await self.power("node1", "off")]
        for op in ops:
            await self.wait_op(op["id"])
        # query ?after= is overridden by the header, as a browser reconnects
        again = await self.connect(b.api, last_event_id=seen, after=0)
        await self.until_received(again, seen)
        upto = again.seqs()[-1]
        self.assertEqual(self.received(again), self.journal(seen, upto=upto))
        self.assertEqual(self.received(first) + self.received(again),
                         self.journal(start, upto=upto))

    async def test_a_cluster_scoped_token_sees_only_its_clusters(self):
        await self.start_region()
        conn = psycopg2.connect(self.dsn)
        try:
            _, scoped = create_token_sync(conn, "c2-viewer", "viewer", ["c2"])
        finally:
            conn.close()
        client = await self.connect(self.api, token=scoped, after=0)
        await self.add_node("node1", cluster="c1")
        await self.add_node("node2", cluster="c2")
        await wait_until(lambda: defer.succeed(client.events))
        await self.add_node("node3", cluster="c2")
        await wait_until(lambda: defer.succeed(len(client.events) >= 2))
        self.assertEqual([json.loads(e.data)["node"]["name"] for e in client.events],
                         ["node2", "node3"])
        self.assertEqual(self.received(client), self.journal(0, clusters={"c2"}))

    async def test_bad_positions_are_refused_naming_the_field(self):
        await self.start_region()
        for header, after, field in (("x", None, "Last-Event-ID"), (None, "-1", "after")):
            body = await self.connect(self.api, last_event_id=header, after=after, status=400)
            self.assertIn(field, body["error"]["message"])

    async def test_the_status_page_follows_the_stream_behind_its_door(self):
        await self.start_region()
        await self.add_node("node1")
        response = await treq.get(self.api + "/", headers=self.auth_headers(), pool=self.http)
        page = (await treq.content(response)).decode()
        self.assertIn(f'data-seq="{self.last_seq()}"', page)
        self.assertIn('<script id="live-rows">', page)
        self.assertIn('<noscript><meta http-equiv="refresh"', page)
        response = await treq.get(self.api + "/events", pool=self.http)
        self.assertEqual(response.code, 401)
        await treq.content(response)


class CliOnTheStreamTests(SystemMixin, DatabaseMixin, unittest.TestCase):
    """``powerctl events``, ``ops wait`` and ``power --wait`` on a real region's stream."""

    nodes = tuple(f"node{i}" for i in range(1, 21))

    async def test_power_wait_follows_more_operations_than_the_old_cap(self):
        await self.start_region()
        await self.start_pserv()
        for name in self.nodes:
            await self.add_node(name)
        # one first: the pserv's lock-out guard lets many attempts at once
        # through only once the simulator's credentials are proven
        await self.wait_op((await self.power("node1", "on"))["id"])
        code, out, err = await self.cli("power", "on", *self.nodes, "--wait",
                                        "--timeout", "60", "--json")
        self.assertEqual(code, 0, out + err)
        self.assertNotIn("polling", err)  # the stream, not the fallback
        results = json.loads(out)
        self.assertEqual({r["node"]: (r["op"]["state"], r["power_state"]) for r in results},
                         {n: ("succeeded", "on") for n in self.nodes})
        # ops wait: already finished ones answer at once, from the read after subscribing
        ids = [str(r["requested"]) for r in results]
        code, out, err = await self.cli("ops", "wait", *ids, "--json")
        self.assertEqual(code, 0, err)
        self.assertEqual({r["state"] for r in json.loads(out)}, {"succeeded"})
        # the bulk form waits on the stream too
        code, out, err = await self.cli("power", "off", "--cluster", "c1", "--confirm",
                                        "--wait", "--timeout", "60", "--json")
        self.assertEqual(code, 0, out + err)
        self.assertNotIn("polling", err)
        self.assertEqual({(r["op"]["state"], r["power_state"]) for r in json.loads(out)},
                         {("succeeded", "off")})

    async def test_ops_wait_and_events_tail(self):
        await self.start_region()
        await self.start_pserv()
        await self.add_node("node1")
        start = max([0] + [s for s, _, _ in journal(self.dsn)])
        op = await self.power("node1", "on")
        code, out, err = await self.cli("ops", "wait", str(op["id"]), "--timeout", "30")
        self.assertEqual(code, 0, err)
        self.assertEqual(out.splitlines()[1].split()[:3], [str(op["id"]), "succeeded",
                                                           str(op["id"])])
        rows = journal(self.dsn, start)
        code, out, err = await self.cli("events", "--after", str(start),
                                        "--count", str(len(rows)), "--json")
        self.assertEqual(code, 0, err)
        lines = [json.loads(line) for line in out.splitlines()]
        self.assertEqual([(e["seq"], e["type"]) for e in lines],  # exactly --count
                         [(s, t) for s, t, _ in rows])
        code, out, err = await self.cli("events", "--after", str(start), "--count", "2")
        self.assertEqual(code, 0, err)
        self.assertIn("node node1 updated: power unknown desired on", out.splitlines()[0])
        self.assertIn(f"op {op['id']} node1 on pending", out.splitlines()[1])


class Raw(protocol.Protocol):
    """A client that sends a request, reads until told to stop, and notes the end."""

    def __init__(self, request):
        self.request = request
        self.received = b""
        self.live = defer.Deferred()
        self.closed = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.request)

    def dataReceived(self, data):
        self.received += data
        if not self.live.called and b": live after" in self.received:
            self.live.callback(None)

    def connectionLost(self, reason):
        self.closed.callback(None)


class BoundsTests(SystemMixin, DatabaseMixin, unittest.TestCase):
    def sql(self, statement, *args):
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(statement, args or None)
                return cur.fetchall() if cur.description else None
        finally:
            conn.close()

    async def test_a_client_that_does_not_read_is_disconnected_with_the_reason_logged(self):
        from twisted.internet import endpoints, reactor
        from twisted.logger import formatEvent, globalLogPublisher

        region = await self.start_region()
        region.stream.queue_limit = 100
        await self.add_node("node1")
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        request = (f"GET /v1/events HTTP/1.1\r\nHost: x\r\n"
                   f"Authorization: Bearer {self.token}\r\n\r\n").encode()
        client = Raw(request)
        await endpoints.connectProtocol(endpoints.TCP4ClientEndpoint(
            reactor, "127.0.0.1", region.api_port.getHost().port), client)
        await client.live
        client.transport.pauseProducing()  # stops reading: the region's buffers fill
        # 40,000 events in one commit: more than the sockets' buffers hold
        self.sql("INSERT INTO power_ops (node, action, requester, error)"
                 " SELECT 'node1', 'query', 'bench', repeat('x', 200)"
                 " FROM generate_series(1, 40000)")
        await wait_until(lambda: defer.succeed(
            any("too slow" in formatEvent(e) for e in logged)), timeout=60)
        client.transport.resumeProducing()
        await client.closed
        self.assertLess(client.received.count(b"\nid: "), 40000)
        self.assertFalse(region.events.subscribers)

    async def test_a_client_resuming_from_pruned_events_is_told(self):
        region = await self.start_region()
        await self.add_node("node1")
        await self.add_node("node2")
        last = self.sql("SELECT max(seq) FROM events")[0][0]
        self.sql("UPDATE events SET at = at - interval '2 days'")
        # Only the leader prunes: a region that has not yet won the election
        # would prune nothing (seen once under load as 0 != 2).
        await wait_until(lambda: defer.succeed(region.coordinator.leader), timeout=30)
        await region.pruner.prune_once()
        pruned = self.sql("SELECT upto FROM events_pruned")[0][0]
        self.assertEqual(pruned, last)
        await self.add_node("node3")
        response = await treq.get(self.api + "/v1/events", params={"after": "0"},
                                  headers=self.auth_headers(), pool=self.http, unbuffered=True)
        client = StreamClient()
        response.deliverBody(client)
        await client.live
        await client.stop()
        self.assertEqual(client.events[0].event, "lost")
        self.assertEqual(json.loads(client.events[0].data), {"after": 0, "pruned_upto": last})
        self.assertEqual([json.loads(e.data)["node"]["name"] for e in client.events[1:]],
                         ["node3"])


class JournalOrderTests(DatabaseMixin, unittest.TestCase):
    """The journal's numbers follow commit order, not write order (migration 0011)."""

    def test_a_late_commit_is_numbered_after_an_earlier_one(self):
        conns = [psycopg2.connect(self.dsn) for _ in range(3)]
        self.addCleanup(lambda: [c.close() for c in conns])
        setup = conns[0]
        with setup.cursor() as cur:
            cur.execute("INSERT INTO clusters (name) VALUES ('c1')")
            cur.execute("INSERT INTO nodes (name, cluster, power) VALUES ('n1', 'c1', '{}')")
        setup.commit()
        early, late, aborted = conns
        writes = {}
        for name, conn in (("early", early), ("aborted", aborted), ("late", late)):
            with conn.cursor() as cur:  # written in this order...
                cur.execute("INSERT INTO power_ops (node, action, requester) VALUES"
                            " ('n1', 'query', %s) RETURNING id", (name,))
                writes[name] = cur.fetchone()[0]
        late.commit()  # ...committed in another
        aborted.rollback()
        seen = journal(self.dsn)
        early.commit()
        after = journal(self.dsn, seen[-1][0])
        ops = [d["op"]["id"] for _, t, d in seen + after if t == "op"]
        self.assertEqual(ops, [writes["late"], writes["early"]])
        self.assertEqual(len(after), 1)  # resuming after the last seen misses nothing
        seqs = [s for s, _, _ in seen + after]
        self.assertEqual(seqs, sorted(seqs))


class HeadTests(SystemMixin, DatabaseMixin, unittest.TestCase):
    async def test_head_answers_the_headers_and_ends(self):
        await self.start_region()
        response = await treq.head(self.api + "/v1/events", headers=self.auth_headers(),
                                   pool=self.http)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type")[0],
                         b"text/event-stream; charset=utf-8")
