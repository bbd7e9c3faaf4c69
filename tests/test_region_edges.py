"""
The region's input bounds and AMP page sizing, exactly at their limits
(found by mutation testing, ``make mutate``).  No database: these are the
checks every request passes before any SQL, and the trimming of recovery
pages to one AMP value.
"""

import json

from twisted.trial import unittest

from powerctl.region import rpc
from powerctl.region.store import base
from powerctl.region.errors import InvalidInput, NotFound
from powerctl.rpc import commands


class TextBoundTests(unittest.TestCase):
    def test_text_fields_hold_up_to_4096_characters(self):
        self.assertEqual(base.check_text("error", "x" * 4096), "x" * 4096)
        with self.assertRaises(InvalidInput) as caught:
            base.check_text("error", "x" * 4097)
        self.assertIn("longer than 4096 characters", str(caught.exception))
        self.assertRaises(InvalidInput, base.check_text, "error", 42)

    def test_page_sizes_run_from_1_to_1000(self):
        self.assertEqual(base.page_limit(None, 50), 50)
        self.assertEqual(base.page_limit(1, 50), 1)
        self.assertEqual(base.page_limit(1000, 50), 1000)
        for bad in (0, 1001, True, "10", 2.0):
            self.assertRaises(InvalidInput, base.page_limit, bad, 50)

    def test_operation_ids_are_positive_bigints(self):
        self.assertEqual(base.op_number("1"), 1)
        self.assertEqual(base.op_number(2**63 - 1), 2**63 - 1)
        for bad in (0, -1, 2**63, "x", None, True):
            self.assertRaises(NotFound, base.op_number, bad)

    def test_names_are_1_to_253_safe_characters(self):
        self.assertEqual(base.check_name("node", "a"), "a")
        self.assertEqual(base.check_name("node", "a" * 253), "a" * 253)
        for bad in ("", "a" * 254, "-a", "a b", "a/b", 7):
            self.assertRaises(InvalidInput, base.check_name, "node", bad)


def size(items):
    return len(json.dumps(items, separators=(",", ":")))


class PageTrimTests(unittest.TestCase):
    def test_a_page_exactly_one_value_long_is_kept_whole(self):
        # one string item: '["' + body + '"]' is 4 characters of overhead
        items = ["x" * (commands.MAX_VALUE - 4)]
        self.assertEqual(size(items), commands.MAX_VALUE)
        self.assertEqual(rpc._trim(items), items)

    def test_a_page_too_big_keeps_the_longest_prefix_that_fits(self):
        items = ["x" * 1000 for _ in range(100)]  # about 100 kB
        trimmed = rpc._trim(items)
        self.assertEqual(trimmed, items[:len(trimmed)])
        self.assertLessEqual(size(trimmed), commands.MAX_VALUE)
        self.assertGreater(size(items[:len(trimmed) + 1]), commands.MAX_VALUE)

    def test_a_single_item_too_big_for_any_page_is_dropped(self):
        self.assertEqual(rpc._trim(["x" * commands.MAX_VALUE]), [])


class StoreHelperTests(unittest.TestCase):
    """The store's pure helpers (store/base.py), each at its edges, without a database."""

    def test_timestamps_from_what_a_pserv_may_send(self):
        import datetime

        utc = datetime.timezone.utc
        when = datetime.datetime(2026, 12, 4, 18, 0, tzinfo=utc)
        self.assertIsNone(base.timestamp(None))  # None: the database's now()
        self.assertIs(base.timestamp(when), when)
        self.assertEqual(base.timestamp(when.timestamp()), when)
        self.assertEqual(base.timestamp(int(when.timestamp())), when)
        self.assertEqual(base.timestamp("2026-12-04T18:00:00+00:00"), when)
        for bad in ("soon", True, [], {}):
            with self.assertRaises(InvalidInput) as caught:
                base.timestamp(bad)
            self.assertIn("started_at", str(caught.exception))

    def test_rows_become_plain_json_ready_values(self):
        import datetime
        import uuid

        when = datetime.datetime(2026, 12, 4, 18, 0, tzinfo=datetime.timezone.utc)
        key = uuid.UUID("12345678-1234-5678-1234-567812345678")
        self.assertEqual(base.plain({"at": when, "uuid": key, "n": 3, "s": "x", "none": None}),
                         {"at": "2026-12-04T18:00:00+00:00",
                          "uuid": "12345678-1234-5678-1234-567812345678",
                          "n": 3, "s": "x", "none": None})

    def test_an_update_naming_a_field_it_cannot_change_is_refused(self):
        base.check_fields({"cluster": "c1"}, ("cluster", "power"), "node")  # fine
        base.check_fields({}, ("cluster",), "node")
        with self.assertRaises(InvalidInput) as caught:
            base.check_fields({"zeta": 1, "alpha": 2, "power": {}}, ("cluster", "power"),
                              "node")
        message = str(caught.exception)
        self.assertIn("node: unknown or read-only field 'alpha'", message)  # the first, sorted
        self.assertIn("can change cluster, power", message)

    def test_pod_manager_keys_are_canonical_uuids_or_nothing(self):
        key = "12345678-1234-5678-1234-567812345678"
        self.assertEqual(base.pod_manager_key(key.upper()), key)
        for bad in ("rack-1", "", "1234"):
            self.assertRaises(NotFound, base.pod_manager_key, bad)


class ResponsivenessTests(unittest.TestCase):
    """
    NodeStore._responsiveness, the rule a node turns non-responsive by:
    more than ``failed_polls_limit`` failed polls in a row *and* at least
    ``responsive_grace`` seconds since its last good poll.  Pure, so tested
    at each boundary without a database.
    """

    def rule(self, failed_polls, seconds, responsive=True, failed=True, queried=True):
        import datetime

        from powerctl.region.store.nodes import NodeStore

        store = NodeStore(None, None, None, responsive_grace=60, failed_polls_limit=2)
        node = {"failed_polls": failed_polls, "responsive": responsive,
                "since_good": datetime.timedelta(seconds=seconds)}
        return store._responsiveness(node, failed, queried)

    def test_a_good_report_always_restores(self):
        self.assertEqual(self.rule(9, 999, responsive=False, failed=False), (0, True))

    def test_more_than_the_limit_and_the_grace_both_needed(self):
        self.assertEqual(self.rule(2, 60), (3, False))   # third failed poll, grace over
        self.assertEqual(self.rule(1, 600), (2, True))   # two are not more than two
        self.assertEqual(self.rule(2, 59.5), (3, True))  # within the grace
        self.assertEqual(self.rule(5, 61), (6, False))

    def test_an_action_outcome_does_not_count_as_a_poll(self):
        self.assertEqual(self.rule(2, 600, queried=False), (2, True))
        self.assertEqual(self.rule(3, 600, queried=False), (3, False))

    def test_a_non_responsive_node_stays_so_until_a_good_report(self):
        self.assertEqual(self.rule(0, 0, responsive=False), (1, False))


class CircuitBudgetTests(unittest.TestCase):
    """A circuit's budget (``store.clusters.check_budget``) at each end of its bounds."""

    def test_max_on_runs_from_1_to_100000_and_spacing_from_0_to_3600(self):
        from powerctl.region.store.clusters import check_budget

        self.assertEqual(check_budget(1, 0), (1, 0.0))
        self.assertEqual(check_budget(100_000, 3600), (100_000, 3600.0))
        for max_on, spacing, field in ((0, 0, "max_on"), (100_001, 0, "max_on"),
                                       (1, -0.5, "spacing"), (1, 3600.5, "spacing"),
                                       (1.0, 0, "max_on"), (1, "1", "spacing")):
            with self.assertRaises(InvalidInput, msg=(max_on, spacing)) as caught:
                check_budget(max_on, spacing)
            self.assertIn(field, str(caught.exception))
