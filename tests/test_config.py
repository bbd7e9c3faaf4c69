"""
Configuration files and the twistd plugins: examples load, command-line
overrides win, and a missing or invalid file is a clear, early error.
"""

import os
import subprocess
import sys

from twisted.python import usage
from twisted.trial import unittest

from powerctl import config
from powerctl.tap import PservOptions, RegionOptions

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ETC = os.path.join(HERE, "etc", "powerctl")
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class ConfigTests(unittest.TestCase):
    def write(self, text):
        path = self.mktemp()
        with open(path, "w", opener=lambda p, flags: os.open(p, flags, 0o600)) as f:
            f.write(text)  # private: a secret file others can read is refused
        return path

    def test_examples_load(self):
        region = config.load(config.RegionConfig, os.path.join(ETC, "region.toml"), "region")
        self.assertEqual(region.rpc_endpoint, "tcp:5250:interface=127.0.0.1")
        pserv = config.load(config.PservConfig, os.path.join(ETC, "pserv.toml"), "pserv")
        self.assertEqual(pserv.regions, ("tcp:host=127.0.0.1:port=5250",))

    def test_overrides_win(self):
        path = os.path.join(ETC, "pserv.toml")
        pserv = config.load(config.PservConfig, path, "pserv",
                            {"cluster": "rack9", "regions": ["tcp:host=::1:port=1"], "name": None})
        self.assertEqual((pserv.cluster, pserv.name), ("rack9", "pserv-1"))
        self.assertEqual(pserv.regions, ("tcp:host=::1:port=1",))

    def test_errors_name_the_file_and_the_setting(self):
        cases = {
            "missing": (None, "not found"),
            "toml": ("[region\nname=", "invalid TOML"),
            "section": ("[pserv]\nname='x'\n", "unknown section"),
            "key": ("[region]\nbogus = 1\n", "unknown setting(s) bogus"),
            "type": ("[region]\nheartbeat_timeout = 'soon'\n", "heartbeat_timeout must be"),
            "endpoint": ("[region]\nrpc_endpoint = '5250'\n", "rpc_endpoint must be"),
        }
        for name, (text, message) in cases.items():
            path = self.write(text) if text is not None else "/nonexistent/region.toml"
            with self.assertRaises(config.ConfigError, msg=name) as caught:
                config.load(config.RegionConfig, path, "region")
            self.assertIn(message, str(caught.exception), name)
            self.assertIn(path, str(caught.exception), name)

    def test_secret_must_be_long_enough(self):
        self.assertRaises(config.ConfigError, config.read_secret, self.write("short"))
        self.assertRaises(config.ConfigError, config.read_secret, "/nonexistent")
        self.assertEqual(config.read_secret(self.write("x" * 20 + "\n")), b"x" * 20)

    def test_options_parse_and_fail_as_usage_errors(self):
        options = PservOptions()
        options.parseOptions(["--config", os.path.join(ETC, "pserv.toml"),
                              "--region", "tcp:host=127.0.0.1:port=1",
                              "--region", "tcp:host=127.0.0.1:port=2"])
        self.assertEqual(len(options["settings"].regions), 2)
        self.assertRaises(usage.UsageError, RegionOptions().parseOptions,
                          ["--config", "/nonexistent.toml"])


class TwistdTests(unittest.TestCase):
    def twistd(self, *argv):
        return subprocess.run([TWISTD, *argv], capture_output=True, text=True, timeout=60)

    def test_plugins_are_listed(self):
        out = self.twistd("--help").stdout
        self.assertIn("powerctl-region", out)
        self.assertIn("powerctl-pserv", out)

    def test_missing_config_fails_fast_with_a_message(self):
        result = self.twistd("-n", "--pidfile=", "powerctl-pserv", "--config", "/nonexistent.toml")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("/nonexistent.toml: configuration file not found", result.stderr + result.stdout)
