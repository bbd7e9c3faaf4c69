"""
Keyset paging of the REST API's lists (:mod:`powerctl.region.paging`).

The cursor alone (pure), then the lists over a served API on a real
PostgreSQL: the ``Link`` header, malformed cursors refused with 400,
filters and a scoped token's clusters applied in SQL before the limit, and
a seeded randomized walk that inserts and deletes rows between pages and
checks that no row existing throughout is skipped or repeated.
"""

import datetime
import json
import random
import re
from urllib.parse import parse_qs, urlsplit

from psycopg2.extras import Json
from twisted.trial import unittest

from powerctl.region import paging, web
from tests.test_api import ApiTestCase

SEEDS = (1, 7, 20261204)
POWER = {"mode": "single", "agents": [{"driver": "ipmi", "params": {"host": "10.0.0.9"}}]}


class CursorTests(unittest.TestCase):
    def test_round_trip_and_opacity(self):
        for kind, key in (("nodes", "rack-1.a:b@c"), ("power_ops", 2**62), ("nodes", "é")):
            cursor = paging.encode(kind, key)
            self.assertRegex(cursor, r"^[A-Za-z0-9_-]+$")
            self.assertEqual(paging.decode(kind, cursor, type(key)), key)

    def test_malformed_cursors_are_refused(self):
        good = paging.encode("nodes", "n1")
        for bad in ("", "!!!", "a", good[:-3] + "***", paging.encode("power_ops", 5),
                    paging.encode("nodes", 5), paging.encode("nodes", True),
                    paging.encode("power_ops", "5"), "x" * 2000,
                    paging.encode("nodes", ["n1"])[:-1]):
            with self.assertRaises(paging.BadCursor, msg=bad):
                paging.decode("nodes", bad, str)
        with self.assertRaises(paging.BadCursor):
            paging.decode("power_ops", paging.encode("power_ops", True), int)

    def test_limit(self):
        self.assertEqual(paging.limit_of(None), paging.DEFAULT_LIMIT)
        self.assertEqual(paging.limit_of("1000"), 1000)
        for bad in ("0", "1001", "-1", "ten", ""):
            with self.assertRaises(ValueError):
                paging.limit_of(bad)

    def test_split_and_link(self):
        rows = [{"n": i} for i in range(4)]
        self.assertEqual(paging.split(rows, 4, "k", lambda r: r["n"]), (rows, None))
        page, cursor = paging.split(rows, 3, "k", lambda r: r["n"])
        self.assertEqual((page, paging.decode("k", cursor, int)), (rows[:3], 2))
        link = paging.link("/v1/nodes", {"cluster": "c 1", "after": "old", "limit": "3"},
                           cursor)
        target = re.match(r'^<([^>]+)>; rel="next"$', link)[1]
        self.assertEqual(parse_qs(urlsplit(target).query),
                         {"after": [cursor], "cluster": ["c 1"], "limit": ["3"]})


def _next(response):
    """The ``after`` cursor of the response's Link header, or None."""
    links = response.headers.getRawHeaders("link") or []
    if not links:
        return None
    target = re.match(r'^<([^>]+)>; rel="next"$', links[0])[1]
    return parse_qs(urlsplit(target).query)["after"][0]


class ApiPagingTests(ApiTestCase):
    def run_sql(self, query, *args):
        return self.pool.runOperation(query, args or None)

    async def add_nodes(self, names, cluster="c1"):
        await self.run_sql("INSERT INTO clusters (name) VALUES (%s) ON CONFLICT DO NOTHING",
                       cluster)
        for name in names:
            await self.run_sql("INSERT INTO nodes (name, cluster, power) VALUES (%s, %s, %s)",
                           name, cluster, Json(POWER))

    async def walk(self, path, token=None, between=None):
        """Every item of a list, following Link headers; ``between()`` runs between pages."""
        seen, cursor, pages = [], None, 0
        while True:
            sep = "&" if "?" in path else "?"
            url = path + (f"{sep}after={cursor}" if cursor else "")
            status, body, response = await self.call(
                "GET", url, **({} if token is None else {"token": token}))
            self.assertEqual(status, 200, body)
            seen.extend(body)
            pages += 1
            cursor = _next(response)
            if cursor is None:
                return seen, pages
            if between is not None:
                await between()

    async def test_default_page_link_and_last_page(self):
        await self.add_nodes([f"n{i:03d}" for i in range(250)])
        status, body, response = await self.call("GET", "/nodes")
        self.assertEqual((status, len(body)), (200, 100))
        self.assertEqual(body[-1]["name"], "n099")
        [link] = response.headers.getRawHeaders("link")
        self.assertTrue(link.startswith("</v1/nodes?after="), link)
        seen, pages = await self.walk("/nodes?limit=100")
        self.assertEqual(([n["name"] for n in seen], pages),
                         ([f"n{i:03d}" for i in range(250)], 3))
        _, body, response = await self.call("GET", "/nodes?limit=1000")
        self.assertEqual((len(body), response.headers.getRawHeaders("link")), (250, None))

    async def test_bad_paging_parameters_are_400s(self):
        await self.add_nodes(["n1"])
        op_cursor = paging.encode("power_ops", 3)
        for path, code, fragment in (
                ("/nodes?after=%21%21", "invalid_cursor", "after"),
                (f"/nodes?after={op_cursor}", "invalid_cursor", "after"),
                ("/nodes?limit=0", "invalid_input", "limit"),
                ("/nodes?limit=1001", "invalid_input", "limit"),
                ("/nodes?power_state=dim", "invalid_input", "power_state"),
                ("/nodes?responsive=maybe", "invalid_input", "responsive"),
                ("/power_ops?after=e30", "invalid_cursor", "after"),
                (f"/power_ops?after={op_cursor}&before=4", "invalid_input", "before"),
                ("/pod_managers?after=xyz", "invalid_cursor", "after"),
                ("/tokens?after=" + paging.encode("nodes", "n1"), "invalid_cursor", "after"),
                ("/audit?limit=5000", "invalid_input", "limit")):
            status, body, _ = await self.call("GET", path)
            self.assertEqual((status, body["error"]["code"]), (400, code), path)
            self.assertIn(fragment, body["error"]["message"], path)

    async def test_filters_apply_before_the_limit(self):
        await self.add_nodes([f"a{i}" for i in range(5)], "c1")
        await self.add_nodes([f"b{i}" for i in range(5)], "c2")
        await self.run_sql("UPDATE nodes SET power_state = 'on' WHERE name IN ('a1', 'b3', 'b4')")
        seen, _ = await self.walk("/nodes?limit=2&power_state=on")
        self.assertEqual([n["name"] for n in seen], ["a1", "b3", "b4"])
        seen, _ = await self.walk("/nodes?limit=2&cluster=c2&power_state=unknown")
        self.assertEqual([n["name"] for n in seen], ["b0", "b1", "b2"])
        _, body, _ = await self.call("GET", "/nodes?responsive=false")
        self.assertEqual(body, [])
        for name in ("a0", "b0", "b1"):
            await self.store.ops.request(name, "on", requester="t")
        seen, _ = await self.walk("/power_ops?limit=1&cluster=c2")
        self.assertEqual([o["node"] for o in seen], ["b1", "b0"])

    async def test_a_scoped_token_gets_full_pages_of_its_clusters(self):
        # the other cluster's nodes sort first: filtered after the limit, the
        # first pages would come back empty
        await self.add_nodes([f"a{i:02d}" for i in range(30)], "other")
        await self.add_nodes(["z1", "z2", "z3"], "mine")
        _, scoped = await self.tokens.create("scoped", "viewer", ["mine"])
        status, body, response = await self.call("GET", "/nodes?limit=2", token=scoped)
        self.assertEqual([n["name"] for n in body], ["z1", "z2"])
        seen, pages = await self.walk("/nodes?limit=2", token=scoped)
        self.assertEqual(([n["name"] for n in seen], pages), (["z1", "z2", "z3"], 2))
        for name in ("a00", "z1", "a01", "z3"):
            await self.store.ops.request(name, "on", requester="t")
        seen, _ = await self.walk("/power_ops?limit=1", token=scoped)
        self.assertEqual([o["node"] for o in seen], ["z3", "z1"])

    async def test_every_list_pages(self):
        for i in range(3):
            await self.store.pod_managers.create(f"pm{i}", f"https://10.0.0.{i}")
            await self.tokens.create(f"t{i}", "viewer")
        seen, pages = await self.walk("/pod_managers?limit=2")
        self.assertEqual(([p["name"] for p in seen], pages), (["pm0", "pm1", "pm2"], 2))
        seen, pages = await self.walk("/tokens?limit=2")
        self.assertEqual([t["name"] for t in seen], ["test-admin", "t0", "t1", "t2"])
        self.assertEqual(pages, 2)
        for i in range(5):
            await self.call("POST", "/tokens", {"name": f"u{i}", "role": "viewer"})
        seen, _ = await self.walk("/audit?limit=2")
        ids = [a["id"] for a in seen]
        self.assertEqual((len(ids), ids), (5, sorted(ids, reverse=True)))
        seen, _ = await self.walk("/audit?limit=2&actor=nobody")
        self.assertEqual(seen, [])

    async def test_randomized_inserts_and_deletes_between_pages(self):
        """
        Seeded: nodes and operations are inserted and deleted between pages;
        every row that existed from the first page to the last shows exactly
        once, in order, and nothing shows twice.
        """
        for seed in SEEDS:
            rng = random.Random(seed)
            print(f"paging walk seed {seed}")
            await self.run_sql("DELETE FROM power_ops")
            await self.run_sql("DELETE FROM nodes")
            names = {f"n{rng.randrange(10**6):06d}" for _ in range(120)}
            await self.add_nodes(sorted(names))
            for name in rng.sample(sorted(names), 60):
                await self.store.ops.request(name, rng.choice(["on", "off"]), requester="t")
            nodes0 = set(names)
            ops0 = {r[0] for r in await self.sql("SELECT id FROM power_ops")}
            deleted_nodes = set()

            async def churn():
                current = sorted(r[0] for r in await self.sql("SELECT name FROM nodes"))
                for _ in range(rng.randrange(4)):
                    name = f"n{rng.randrange(10**6):06d}"
                    if name not in names:
                        names.add(name)
                        await self.add_nodes([name])
                for name in rng.sample(current, min(len(current), rng.randrange(4))):
                    await self.run_sql("DELETE FROM power_ops WHERE node = %s", name)
                    await self.run_sql("DELETE FROM nodes WHERE name = %s", name)
                    deleted_nodes.add(name)
                opened = [r[0] for r in await self.sql("SELECT id FROM power_ops")]
                for op_id in rng.sample(opened, min(len(opened), rng.randrange(3))):
                    await self.run_sql("DELETE FROM power_ops WHERE id = %s", op_id)
                live = sorted(r[0] for r in await self.sql("SELECT name FROM nodes"))
                if live:
                    await self.store.ops.request(rng.choice(live), "on", requester="t")

            limit = rng.choice([1, 3, 7, 10])
            seen, _ = await self.walk(f"/nodes?limit={limit}", between=churn)
            got = [n["name"] for n in seen]
            self.assertEqual(got, sorted(set(got)), f"seed {seed}: out of order or repeated")
            throughout = nodes0 - deleted_nodes
            self.assertEqual(throughout - set(got), set(), f"seed {seed}: skipped")

            seen, _ = await self.walk(f"/power_ops?limit={limit}", between=churn)
            got = [o["id"] for o in seen]
            self.assertEqual(got, sorted(set(got), reverse=True), f"seed {seed}")
            still = {x[0] for x in await self.sql("SELECT id FROM power_ops")}
            self.assertEqual((ops0 & still) - set(got), set(), f"seed {seed}: skipped ops")
            json.dumps(seen)  # plain JSON rows


class AggregateTests(ApiTestCase):
    """The status page's and /metrics' SQL agrees with web's pure reference on the rows."""

    run_sql = ApiPagingTests.run_sql

    async def test_counts_and_page_match_the_rows(self):
        rng = random.Random(5)
        print("aggregate seed 5")
        for cluster in ("c1", "c2", "c3"):
            await self.run_sql("INSERT INTO clusters (name) VALUES (%s)", cluster)
        for i in range(80):
            await self.run_sql(
                "INSERT INTO nodes (name, cluster, power, power_state, desired_state,"
                " responsive, last_error, drift_since) VALUES (%s, %s, %s, %s, %s, %s, %s,"
                " CASE WHEN %s THEN now() END)",
                f"n{i:02d}", rng.choice(["c1", "c2", "c3"]), Json(POWER),
                rng.choice(["on", "off", "unknown", "error"]), rng.choice(["on", "off", None]),
                rng.random() > 0.2, rng.choice([None, None, "boom"]), rng.random() > 0.8)
        rows = await self.store.nodes.list()
        timeout = self.store.clusters.heartbeat_timeout
        self.assertEqual((await self.store.nodes.fleet(timeout))["counts"], web.counts_of(rows))
        for cluster, name, problems, after, limit in (
                (None, "", False, "", 10), ("c2", "", False, "", 5), (None, "1", False, "", 3),
                (None, "", True, "n20", 7), ("c3", "n", True, "n50", 100),
                (None, "zz", False, "", 10)):
            doc = await self.store.nodes.overview(
                timeout, cluster=cluster, name=name, problems=problems, after_name=after,
                limit=limit)
            self.assertEqual(doc["counts"], web.counts_of(rows))
            self.assertEqual(_moments(doc["page"]),
                             _moments(_without_power(
                                 web.page_of(rows, cluster, name, problems, after, limit))),
                             (cluster, name, problems, after, limit))

    async def test_newest_by_state_is_the_per_state_lists_in_one_query(self):
        await self.run_sql("INSERT INTO clusters (name) VALUES ('c1')")
        await self.run_sql("INSERT INTO nodes (name, cluster, power) VALUES ('n1', 'c1', %s)",
                           Json(POWER))
        rng = random.Random(9)
        for _ in range(40):
            op = await self.store.ops.request("n1", "on", requester="t")
            state = rng.choice(["pending", "running", "succeeded", "failed", "cancelled"])
            await self.run_sql("UPDATE power_ops SET state = %s WHERE id = %s", state, op["id"])
        states = ("running", "pending", "failed", "succeeded", "superseded")
        expected = []
        for state in states:
            expected += await self.store.ops.list(state=state, limit=4)
        self.assertEqual(await self.store.ops.newest_by_state(states, 4), expected)

    async def test_the_status_pages_one_statement_answers_what_the_methods_do(self):
        """
        :meth:`NodeStore.overview` (one statement) against the separate
        methods the status page used to call: counts, a page of nodes,
        clusters with their pservs, the open and the last finished
        operations, the event journal's position.
        """
        seed = 11
        print(f"overview seed {seed}")
        rng = random.Random(seed)
        for cluster in ("c1", "c2", "c3"):
            await self.run_sql("INSERT INTO clusters (name) VALUES (%s)", cluster)
        for i in range(60):
            await self.run_sql(
                "INSERT INTO nodes (name, cluster, power, power_state, desired_state,"
                " responsive, last_error, drift_since) VALUES (%s, %s, %s, %s, %s, %s, %s,"
                " CASE WHEN %s THEN now() END)",
                f"n{i:02d}", rng.choice(["c1", "c2"]), Json(POWER),
                rng.choice(["on", "off", "unknown", "error"]), rng.choice(["on", "off", None]),
                rng.random() > 0.2, rng.choice([None, None, "boom <x>"]), rng.random() > 0.8)
        await self.store.clusters.register_pserv("p1", "c1", "1.0", "r1")
        await self.store.clusters.heartbeat("p1", 3)
        await self.store.clusters.register_pserv("p0", "c1", "1.0", "r1")
        await self.store.clusters.pserv_disconnected("p0")
        await self.store.clusters.register_pserv("p2", "c2", "1.0", "r1")
        await self.run_sql("UPDATE pservs SET last_heartbeat = now() - interval '1 hour'"
                           " WHERE name = 'p2'")
        for _ in range(50):
            op = await self.store.ops.request(f"n{rng.randrange(60):02d}", "on", requester="t")
            state = rng.choice(["pending", "running", "succeeded", "failed", "cancelled"])
            await self.run_sql(
                "UPDATE power_ops SET state = %s, finished_at = CASE WHEN %s THEN"
                " now() - make_interval(secs => %s) END WHERE id = %s",
                state, state not in ("pending", "running"), rng.random() * 100, op["id"])
        timeout = self.store.clusters.heartbeat_timeout
        opened, finished = ("running", "pending"), ("succeeded", "failed", "cancelled")
        clusters = [{k: v for k, v in c.items() if k != "circuits"}
                    for c in await self.store.clusters.list()]
        rows = await self.store.nodes.list()
        counts = web.counts_of(rows)
        expected_open = await self.store.ops.newest_by_state(opened, 7)
        expected_finished = await self.store.ops.newest_by_state(finished, 5)
        expected_finished.sort(key=lambda op: (_moments(op["finished_at"]), op["id"]),
                               reverse=True)
        seq = await self.store.events.last_seq()
        self.assertGreater(seq, 0)
        for cluster, name, problems, after, limit in (
                (None, "", False, "", 10), ("c2", "", False, "", 5), (None, "1", False, "", 3),
                (None, "", True, "n20", 7), ("c1", "n", True, "n30", 100),
                (None, "zz", False, "", 10), ("c3", "", False, "n10", 4)):
            doc = await self.store.nodes.overview(
                timeout, cluster=cluster, name=name, problems=problems, after_name=after,
                limit=limit, open_states=opened, open_limit=7, finished_states=finished,
                finished_limit=5, seq=after == "")
            page = _without_power(web.page_of(rows, cluster, name, problems, after, limit))
            case = (cluster, name, problems, after, limit)
            self.assertEqual(_moments(doc["page"]), _moments(page), case)
            self.assertEqual(doc["counts"], counts)
            self.assertEqual(_moments(doc["clusters"]), _moments(clusters))
            self.assertEqual(_moments(doc["open"]), _moments(expected_open))
            self.assertEqual(_moments(doc["finished"]), _moments(expected_finished[:5]))
            self.assertEqual(doc["seq"], seq if after == "" else None)
        self.assertEqual([(c["name"], c["status"], c["actions_in_flight"]) for c in clusters],
                         [("c1", "online", 3), ("c2", "offline", 0), ("c3", "offline", 0)])
        fleet = await self.store.nodes.fleet(timeout)
        self.assertEqual(fleet["counts"], counts)
        self.assertEqual(_moments(fleet["clusters"]), _moments(clusters))
        self.assertEqual(fleet["ops"], await self.store.ops.count_by_state())


def _without_power(page):
    """A page of node rows as the status page reads it: no power documents."""
    return dict(page, nodes=[{k: v for k, v in n.items() if k != "power"}
                             for n in page["nodes"]])


def _moments(value):
    """``value`` with ISO timestamps as datetimes: PostgreSQL's JSON writes them shorter."""
    if isinstance(value, dict):
        return {k: _moments(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_moments(v) for v in value]
    if isinstance(value, str) and len(value) >= 19 and value[10:11] == "T":
        try:
            return datetime.datetime.fromisoformat(value)
        except ValueError:
            return value
    return value
