"""
The node list as PostgreSQL writes it (:mod:`powerctl.region.store.node_page`)
against the Python it replaced: the same nodes, the same fields, the same
timestamps as text, and the same redaction (``powerctl.powerdoc.redact``)
on power documents of every shape -- the model's, hostile ones stored
before an upgrade or typed by hand, unknown drivers, names that only
Python's case-insensitive search calls secret.  Then the filters and the
page boundary against :meth:`NodeStore.list`, and a scoped token's page
that somehow held another cluster's node refused rather than sent.
"""

import json
import random
import re

from psycopg2.extras import Json
from twisted.trial import unittest

from powerctl.region import api, auth, paging, powerconfig
from powerctl.region.store import node_page
from powerctl.region.store.base import Prepared, run_prepared
from tests.test_powerconfig import fake_catalogue
from tests.test_store import StoreTestCase

SEED = 20261205

#: Power documents of every shape redact() tolerates.
DOCUMENTS = [
    {"mode": "single", "agents": [{"driver": "ipmi", "params": {
        "host": "10.0.0.1", "port": 623, "password": "pw-1", "username": "root"}}]},
    {"mode": "concurrent", "agents": [
        {"driver": "ipmi", "params": {"host": "h", "password": ""}},
        {"driver": "snmp", "params": {"host": "p", "outlet": 3, "community": None}},
        {"driver": "redfish", "params": {"url": "https://x", "password": "s3cret",
                                         "token": "not-secret-for-redfish"}}]},
    {"levels": [{"agents": [{"driver": "snmp", "params": {"community": "c0mm",
                                                          "outlet": 1}}]},
                {"agents": [{"driver": "ghost", "params": {
                    "api_KEY": "k1", "Password": "p1", "paſsword": "p2", "\u212aey": "p3",
                    "communİty": "p4", "tok": "visible", "secretive": {"nested": [1, 2]},
                    "keyless": 0, "blank": "", "none": None, "x": 1.5}}]},
                "not a level", {"agents": "not a list"}, {"no": "agents"},
                {"agents": [7, {"driver": 5, "params": {"token": "t"}},
                            {"driver": "ipmi", "params": ["a", "list"]},
                            {"driver": "ipmi"}]}]},
    {"levels": "not a list", "agents": [{"driver": "ipmi", "params": {"password": "p"}}]},
    {"agents": {"driver": "ipmi"}},
    {"agents": []},
    {"levels": []},
    {"mode": "single"},
    {"agents": [{"driver": "manual", "params": {"label": "x", "key": "k"}},
                {"driver": "webhook", "params": {"url": "https://h", "secret": "s",
                                                 "headers": {"authorization": "kept"}}},
                {"driver": "ipmi", "params": {}}]},
    {"agents": [{"driver": "ipmi", "params": {"password": 0, "host": "h"}},
                {"driver": "snmp", "params": {"community": False}},
                {"driver": "redfish", "params": {"password": {"sealed": "x"}, "url": "u"}}]},
    ["a", "list"],
    "text",
    42,
    None,
    {"agents": [{"driver": "ipmi", "params": {"password": "é\u2028\"quoted\"\\",
                                               "host": "ünïcode"}}]},
]


class FoldTests(unittest.TestCase):
    def test_the_fold_is_exactly_pythons_ignorecase(self):
        """
        Every character that Python's case-insensitive search matches to a
        letter of the pattern is folded onto it in SQL, and no other.
        """
        letters = sorted(set(node_page._secretish_sql().replace("|", "")))
        any_letter = re.compile("[" + "".join(letters) + "]", re.IGNORECASE)
        folded = {}
        for point in range(0x110000):
            if 0xD800 <= point <= 0xDFFF:
                continue
            char = chr(point)
            if char not in letters and any_letter.fullmatch(char):
                [letter] = [x for x in letters if re.fullmatch(x, char, re.IGNORECASE)]
                folded[char] = letter
        table = dict(zip(*node_page._FOLD_ASCII))
        table.update(node_page._FOLD_OTHER)
        self.assertEqual(table, folded)

    def test_the_fields_are_the_apis(self):
        self.assertEqual(node_page.FIELDS, api.NODE_FIELDS)

    def test_one_statement_per_filter_combination_and_catalogue(self):
        statements = node_page.Statements()
        secrets = {"ipmi": frozenset({"password"})}
        made = {statements.get(dict.fromkeys(names, "x"), secrets).name
                for names in (set(), {"cluster"}, {"cluster", "responsive"}, {"clusters"})}
        self.assertEqual(len(made), 4)
        plain = statements.get({"cluster": None}, secrets)
        self.assertIs(statements.get({}, {"ipmi": {"password"}}), plain)
        self.assertEqual(set(plain.params), {"after", "limit"})
        self.assertNotEqual(statements.get({}, {}).name, plain.name)
        both = statements.get({"cluster": "c", "responsive": False}, secrets)
        self.assertEqual(set(both.params), {"after", "limit", "cluster", "responsive"})
        self.assertIn("SET LOCAL jit = off", both.execute)


class NodePageTests(StoreTestCase):
    async def insert(self, rows):
        for name, cluster, power in rows:
            await self.pool.runOperation(
                "INSERT INTO clusters (name) VALUES (%s) ON CONFLICT DO NOTHING", (cluster,))
            await self.pool.runOperation(
                "INSERT INTO nodes (name, cluster, power) VALUES (%s, %s, %s)",
                (name, cluster, Json(power)))

    async def both(self, secrets, limit=1000, **filters):
        """(the SQL page parsed, more, last; the Python page of the same nodes)."""
        text, more, last, clusters = await self.store.nodes.page(secrets, limit=limit,
                                                                 **filters)
        got = json.loads(text)
        self.assertEqual(sorted(clusters), sorted({n["cluster"] for n in got}))
        list_filters = dict(filters)
        rows = await self.store.nodes.list(limit=limit + 1, **list_filters)
        return got, more, last, [node_page.reference_node(r, secrets) for r in rows[:limit]], len(rows)

    async def test_every_document_shape_redacts_as_python_does(self):
        await self.insert([(f"n{i:02d}", "c1", doc) for i, doc in enumerate(DOCUMENTS)])
        # timestamps with and without microseconds, drift, errors, circuits
        await self.pool.runOperation(
            "UPDATE nodes SET last_queried_at = '2026-12-05 01:02:03+00',"
            " last_changed_at = '2026-12-05 01:02:03.000450+00', last_error = 'bad \"x\" é',"
            " drift_since = now(), drift_observed = 'off', drift_polls = 3,"
            " desired_state = 'on', circuit = 'a' WHERE name = 'n01'")
        for secrets in (powerconfig.secret_names(fake_catalogue()), {}):
            got, more, last, expected, _ = await self.both(secrets)
            self.assertEqual((got, more), (expected, False))
            text = json.dumps(got)
            for secret in ("pw-1", "s3cret", "c0mm", '"k1"', '"p1"', '"p2"', '"p3"', '"p4"'):
                self.assertNotIn(secret, text)
        got, _, _, _, _ = await self.both({})
        # an unknown driver: only the names that look secret
        self.assertEqual(got[1]["power"]["agents"][2]["params"]["token"], "(set)")
        self.assertEqual(got[2]["power"]["levels"][1]["agents"][0]["params"]["tok"], "visible")

    async def test_filters_and_page_boundaries_match_the_list(self):
        rng = random.Random(SEED)
        print(f"node page seed {SEED}")
        power = {"mode": "single", "agents": [{"driver": "ipmi", "params": {
            "host": "10.0.0.1", "password": "pw"}}]}
        await self.insert([(f"n{i:03d}", rng.choice(["c1", "c2", "c3"]), power)
                           for i in range(60)])
        await self.pool.runOperation("UPDATE nodes SET power_state = 'on', desired_state = 'on'"
                                     " WHERE name < 'n020'")
        await self.pool.runOperation("UPDATE nodes SET responsive = false WHERE name > 'n050'")
        secrets = powerconfig.secret_names(fake_catalogue())
        for _ in range(40):
            filters = {k: v for k, v in (
                ("cluster", rng.choice([None, "c1", "c2", "nope"])),
                ("clusters", rng.choice([None, ["c1", "c3"], []])),
                ("power_state", rng.choice([None, "on", "unknown"])),
                ("desired_state", rng.choice([None, "on", "off"])),
                ("responsive", rng.choice([None, True, False])),
                ("after_name", rng.choice([None, "n010", "n0555", "n999"])),
            ) if v is not None}
            limit = rng.choice([1, 2, 5, 100])
            got, more, last, expected, found = await self.both(secrets, limit, **filters)
            where = f"{filters} limit {limit}"
            self.assertEqual(got, expected, where)
            self.assertEqual(more, found > limit, where)
            if more:
                self.assertEqual(last, got[-1]["name"], where)

    async def test_local_settings_hold_for_the_statement_only(self):
        """
        Prepared.local (the page's ``SET LOCAL jit = off``...) applies to the
        statement on its first run (PREPARE; SET; EXECUTE) and later ones,
        and ends with it: the pool's session keeps its own setting.
        """
        statement = Prepared("local_setting_probe", "SELECT current_setting('jit'),"
                             " current_setting('plan_cache_mode'), %(x)s::int",
                             local="SET LOCAL jit = off; SET LOCAL plan_cache_mode ="
                                   " force_generic_plan")
        conn = next(iter(self.pool.connections))
        await conn.runOperation("SET jit = on")
        for x in (1, 2):
            self.assertEqual(await run_prepared(conn, statement, {"x": x}),
                             [("off", "force_generic_plan", x)])
        self.assertEqual(await conn.runQuery("SELECT current_setting('jit')"), [("on",)])

    async def test_a_scoped_page_holding_another_cluster_is_refused(self):
        scoped = auth.Principal("t", "viewer", frozenset({"mine"}))
        fine = paging.EncodedPage("[]", ["mine"])
        self.assertIs(auth.filter_listing(scoped, "list_nodes", fine), fine)
        with self.assertRaises(RuntimeError):
            auth.filter_listing(scoped, "list_nodes", paging.EncodedPage("[]", ["other"]))
        unscoped = auth.Principal("t", "viewer", None)
        page = paging.EncodedPage("[]", ["other"])
        self.assertIs(auth.filter_listing(unscoped, "list_nodes", page), page)
        self.assertEqual(page.encoded(), b"[]\n")
