"""The automatic fencing decision (issue 13): grace, storms, rate limit."""

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from powerctl.region.autofence import AutoFencePolicy, Decision, NodeHealth, decide

ON = AutoFencePolicy(enabled=True, grace=60, window=300, storm_share=0.5, max_per_window=2)


def healthy(n):
    return [NodeHealth(f"ok{i}") for i in range(n)]


class DecideTests(unittest.TestCase):
    def test_disabled_fences_nothing(self):
        nodes = [NodeHealth("a", nonresponsive_since=0.0)] + healthy(9)
        self.assertEqual(decide(AutoFencePolicy(), 1000.0, nodes, []), Decision(total=10))

    def test_a_node_past_its_grace_is_fenced(self):
        nodes = [NodeHealth("a", nonresponsive_since=100.0)] + healthy(9)
        self.assertEqual(decide(ON, 160.0, nodes, []).fence, ("a",))

    def test_a_node_within_its_grace_is_not(self):
        nodes = [NodeHealth("a", nonresponsive_since=100.0)] + healthy(9)
        self.assertEqual(decide(ON, 159.9, nodes, []).fence, ())

    def test_a_node_with_an_open_fence_is_not_fenced_again(self):
        nodes = [NodeHealth("a", nonresponsive_since=0.0, fence_open=True)] + healthy(9)
        self.assertEqual(decide(ON, 1000.0, nodes, []).fence, ())

    def test_a_node_fenced_already_is_not_fenced_again(self):
        # fenced through its PDU, its BMC went dark with it: still down
        nodes = [NodeHealth("a", nonresponsive_since=0.0, fenced=True)] + healthy(9)
        self.assertEqual(decide(ON, 1000.0, nodes, []).fence, ())

    def test_half_the_cluster_down_at_once_is_a_storm(self):
        nodes = [NodeHealth(f"d{i}", nonresponsive_since=100.0) for i in range(6)] + healthy(4)
        decision = decide(ON, 200.0, nodes, [])
        self.assertEqual((decision.storm, decision.fence, decision.recent), (True, (), 6))

    def test_exactly_the_share_is_not_a_storm(self):
        nodes = [NodeHealth(f"d{i}", nonresponsive_since=100.0) for i in range(5)] + healthy(5)
        decision = decide(ON, 200.0, nodes, [])
        self.assertFalse(decision.storm)
        self.assertEqual(decision.fence, ("d0", "d1"))

    def test_failures_older_than_the_window_are_not_a_storm(self):
        # Six nodes went down one by one long ago: hosts, not the network.
        nodes = [NodeHealth(f"d{i}", nonresponsive_since=float(i)) for i in range(6)] + healthy(4)
        decision = decide(ON, 1000.0, nodes, [])
        self.assertFalse(decision.storm)

    def test_the_rate_limit_counts_fences_already_started(self):
        nodes = [NodeHealth(f"d{i}", nonresponsive_since=float(i)) for i in range(3)] + healthy(7)
        decision = decide(ON, 400.0, nodes, [350.0])
        self.assertEqual(decision.fence, ("d0",))
        self.assertEqual(decision.throttled, ("d1", "d2"))

    def test_fences_older_than_the_window_do_not_count(self):
        nodes = [NodeHealth(f"d{i}", nonresponsive_since=float(i)) for i in range(3)] + healthy(7)
        self.assertEqual(decide(ON, 400.0, nodes, [100.0]).fence, ("d0", "d1"))

    def test_oldest_failure_first(self):
        nodes = [NodeHealth("late", nonresponsive_since=50.0),
                 NodeHealth("early", nonresponsive_since=10.0)] + healthy(8)
        policy = AutoFencePolicy(enabled=True, grace=1, window=5, max_per_window=1)
        self.assertEqual(decide(policy, 500.0, nodes, []).fence, ("early",))


class PolicyTests(unittest.TestCase):
    def test_from_dict_names_an_unknown_key(self):
        with self.assertRaisesRegex(ValueError, "unknown setting.*gracee"):
            AutoFencePolicy.from_dict({"gracee": 3})

    def test_share_out_of_range(self):
        with self.assertRaisesRegex(ValueError, "storm_share"):
            AutoFencePolicy.from_dict({"storm_share": 1.5})

    def test_round_trip(self):
        self.assertEqual(AutoFencePolicy.from_dict(ON.to_dict()), ON)


_node = st.builds(
    NodeHealth, name=st.text("abcdef", min_size=1, max_size=4),
    nonresponsive_since=st.one_of(st.none(), st.floats(0, 1000)),
    fence_open=st.booleans(), fenced=st.booleans())


class DecideProperties(unittest.TestCase):
    @settings(max_examples=300, deadline=None)
    @given(nodes=st.lists(_node, max_size=12), now=st.floats(0, 2000),
           started=st.lists(st.floats(0, 2000), max_size=6),
           share=st.floats(0.05, 1.0), limit=st.integers(1, 4))
    def test_never_harmful(self, nodes, now, started, share, limit):
        policy = AutoFencePolicy(enabled=True, grace=60, window=300,
                                 storm_share=share, max_per_window=limit)
        decision = decide(policy, now, nodes, started)
        by_name = {}
        for n in nodes:
            by_name.setdefault(n.name, []).append(n)
        for name in decision.fence:
            # only nodes down past their grace, without an open fence, not fenced
            self.assertTrue(any(n.nonresponsive_since is not None
                                and not (n.fence_open or n.fenced)
                                and now - n.nonresponsive_since >= 60 for n in by_name[name]))
        spent = sum(1 for t in started if now - t < 300)
        self.assertLessEqual(len(decision.fence) + spent, max(limit, spent))
        if decision.storm:
            self.assertEqual(decision.fence, ())
            self.assertGreater(decision.recent, share * len(nodes))


class PolicyBoundsTests(unittest.TestCase):
    """Each setting at its documented bounds (the API's schema says the same)."""

    def test_the_defaults(self):
        self.assertEqual(AutoFencePolicy().to_dict(), {
            "enabled": False, "grace": 300.0, "window": 600.0, "storm_share": 0.5,
            "max_per_window": 5, "soft_url": None, "soft_timeout": 30.0})
        self.assertEqual(Decision(), Decision(fence=(), storm=False, throttled=(), recent=0,
                                              total=0))

    def test_seconds_are_positive_and_at_most_1e9(self):
        for key in ("grace", "window", "soft_timeout"):
            self.assertEqual(getattr(AutoFencePolicy.from_dict({key: 1e9}), key), 1e9)
            self.assertEqual(getattr(AutoFencePolicy.from_dict({key: 1}), key), 1.0)
            for bad in (0, -1, 1e9 + 1, float("nan"), True, "5", None):
                with self.assertRaisesRegex(ValueError, key + "|number"):
                    AutoFencePolicy.from_dict({key: bad})

    def test_the_share_is_at_most_one(self):
        self.assertEqual(AutoFencePolicy.from_dict({"storm_share": 1}).storm_share, 1.0)
        for bad in (0, 1.01, False):
            with self.assertRaises(ValueError):
                AutoFencePolicy.from_dict({"storm_share": bad})

    def test_the_limit_is_a_whole_number_up_to_a_million(self):
        self.assertEqual(AutoFencePolicy.from_dict({"max_per_window": 1}).max_per_window, 1)
        self.assertEqual(
            AutoFencePolicy.from_dict({"max_per_window": 1_000_000}).max_per_window, 1_000_000)
        for bad in (0, 1_000_001, 2.0, True, "3"):
            with self.assertRaises(ValueError):
                AutoFencePolicy.from_dict({"max_per_window": bad})

    def test_enabled_is_a_boolean(self):
        for bad in (1, "true", None):
            with self.assertRaisesRegex(ValueError, "enabled"):
                AutoFencePolicy.from_dict({"enabled": bad})

    def test_the_soft_url_is_http_and_bounded(self):
        for good in (None, "http://h/x", "https://h/x", "http://" + "a" * 2041):
            self.assertEqual(AutoFencePolicy.from_dict({"soft_url": good}).soft_url, good)
        for bad in ("ftp://h", "http://" + "a" * 2042, 5, "h/http://"):
            with self.assertRaisesRegex(ValueError, "soft_url"):
                AutoFencePolicy.from_dict({"soft_url": bad})


class DecideEdgeTests(unittest.TestCase):
    def test_a_node_down_exactly_one_window_ago_still_counts_towards_a_storm(self):
        nodes = [NodeHealth(f"d{i}", nonresponsive_since=100.0) for i in range(6)] + healthy(4)
        self.assertTrue(decide(ON, 400.0, nodes, []).storm)  # window 300: 400 - 100
        self.assertFalse(decide(ON, 400.1, nodes, []).storm)

    def test_more_fences_started_than_the_limit_fences_none(self):
        nodes = [NodeHealth(f"d{i}", nonresponsive_since=float(i)) for i in range(3)] + healthy(7)
        decision = decide(ON, 400.0, nodes, [350.0, 360.0, 370.0])
        self.assertEqual((decision.fence, decision.throttled), ((), ("d0", "d1", "d2")))

    def test_a_fenced_node_is_not_fenced_again(self):
        nodes = [NodeHealth("a", nonresponsive_since=0.0, fenced=True)] + healthy(9)
        self.assertEqual(decide(ON, 1000.0, nodes, []).fence, ())
