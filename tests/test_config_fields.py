"""
The settings classes check their own fields (attrs validators): a settings
object built in code is held to the rules of a file, and every refusal
names the setting and what it accepts.
"""

from twisted.trial import unittest

from powerctl import config


class FieldTests(unittest.TestCase):
    def refused(self, cls, **values):
        with self.assertRaises(config.ConfigError) as caught:
            config.build(cls, values, "f.toml")
        return str(caught.exception)

    def test_each_kind_of_refusal_names_the_setting_and_what_it_takes(self):
        P, R = config.PservConfig, config.RegionConfig
        cases = [
            (R, "name", "  ", "f.toml: name must be a non-empty string"),
            (R, "api_endpoint", 5240, "f.toml: api_endpoint must be a Twisted endpoint"),
            (R, "lease", 0, "f.toml: lease must be a positive number"),
            (R, "lease", True, "f.toml: lease must be a positive number"),
            (P, "regions", [], "f.toml: regions must be a non-empty list"),
            (P, "regions", ["tcp:h", "5250"], "f.toml: regions must be a Twisted endpoint"),
            (P, "max_actions", 1.5, "f.toml: max_actions must be a positive integer"),
            (R, "dispatch_concurrency", 0,
             "f.toml: dispatch_concurrency must be a positive integer"),
            (P, "stagger_on", -1, "f.toml: stagger_on must be a positive number, or 0 for off"),
        ]
        for cls, key, value, message in cases:
            self.assertTrue(self.refused(cls, **{key: value}).startswith(message), key)

    def test_values_are_normalised(self):
        pserv = config.build(config.PservConfig, {
            "regions": "tcp:host=h:port=1", "stagger_on": 0, "manual_timeout": 0}, "f.toml")
        self.assertEqual(pserv.regions, ("tcp:host=h:port=1",))
        self.assertEqual((pserv.stagger_on, pserv.manual_timeout), (0.0, 0.0))
        self.assertEqual(config.PservConfig(regions=["tcp:a", "tcp:b"]).regions,
                         ("tcp:a", "tcp:b"))

    def test_settings_built_in_code_are_checked_too(self):
        self.assertRaises(ValueError, config.PservConfig, poll_interval=-5)
        self.assertRaises(ValueError, config.RegionConfig, rpc_endpoint="5250")

    def test_the_defaults_are_valid(self):
        config.RegionConfig()
        config.PservConfig()
