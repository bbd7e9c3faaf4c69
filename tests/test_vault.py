"""
Issue 10, secrets at rest: the vault (pure), key files, a database dump
that holds none of the secrets a test registered, the migration of plain
rows at start-up, refusals to start, and key rotation with requests in
flight.
"""

import io
import json
import os
import subprocess
import tempfile

import psycopg2
from twisted.internet import defer, reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from powerctl.cli import Context
from powerctl.cli.main import run as run_cli
from powerctl.config import RegionConfig
from powerctl.region import vault as vaults
from powerctl.region.service import RegionService
from tests.pg import DatabaseMixin
from tests.system import SystemMixin, catalogue, wait_until
from tests.test_powerconfig import fake_catalogue


def ipmi(password):
    return {"mode": "single", "agents": [{"driver": "ipmi", "params": {
        "host": "10.0.0.5", "password": password}}]}


class PureVaultTests(unittest.TestCase):
    def test_seal_and_open(self):
        vault = vaults.Vault.generate()
        sealed = vault.seal("hunter2")
        self.assertTrue(sealed.startswith(vaults.PREFIX))
        self.assertNotIn("hunter2", sealed)
        self.assertEqual(vault.open(sealed), "hunter2")
        self.assertNotEqual(vault.seal("hunter2"), sealed)  # a fresh IV each time
        self.assertEqual(vault.open({"Authorization": "x"}), {"Authorization": "x"})
        self.assertEqual(vault.open(vault.seal({"Authorization": "Bearer x"})),
                         {"Authorization": "Bearer x"})
        self.assertEqual((vault.seal(""), vault.seal(None)), ("", None))
        self.assertEqual(vault.open("plain"), "plain")  # not sealed yet: as it is
        with self.assertRaises(vaults.VaultError) as e:
            vaults.Vault.generate().open(sealed)
        self.assertNotIn("hunter2", str(e.exception))
        with self.assertRaises(vaults.VaultError):
            vaults.Vault([b"not a key"])

    def test_power_secrets_are_sealed_and_unchanged_ones_keep_their_ciphertext(self):
        vault = vaults.Vault.generate()
        power = {"mode": "concurrent", "agents": [
            {"driver": "ipmi", "params": {"host": "h", "password": "pw"}},
            {"driver": "webhook", "params": {"on_url": "u", "headers": {"X-Key": "k"}}}]}
        sealed = vault.seal_power(power, None, fake_catalogue())
        text = json.dumps(sealed)
        self.assertNotIn('"pw"', text)
        self.assertNotIn("X-Key", text)
        self.assertEqual(sealed["agents"][0]["params"]["host"], "h")
        self.assertEqual(vault.open_power(sealed), power)
        self.assertEqual(vault.seal_power(power, sealed, fake_catalogue()), sealed)
        changed = json.loads(json.dumps(power))
        changed["agents"][0]["params"]["password"] = "new"
        again = vault.seal_power(changed, sealed, fake_catalogue())
        self.assertNotEqual(again["agents"][0]["params"]["password"],
                            sealed["agents"][0]["params"]["password"])
        self.assertEqual(again["agents"][1], sealed["agents"][1])

    def test_rotation_reads_both_keys_and_seals_with_the_first(self):
        old = vaults.Vault.generate()
        sealed = old.seal("pw")
        both = vaults.Vault([vaults.Vault.generate().keys[0], *old.keys])
        self.assertEqual(both.open(sealed), "pw")
        resealed = both.reseal(sealed)
        self.assertEqual(vaults.Vault(both.keys[:1]).open(resealed), "pw")
        with self.assertRaises(vaults.VaultError):
            old.open(resealed)


class KeyFileTests(unittest.TestCase):
    def setUp(self):
        self.directory = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, self.directory)

    def test_created_private_and_refused_when_others_can_read_it(self):
        path = os.path.join(self.directory, "sub", "secrets.key")
        vault = vaults.create_key_file(path)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(os.stat(os.path.dirname(path)).st_mode & 0o777, 0o700)
        self.assertEqual(vaults.load_key_file(path).keys, vault.keys)
        os.chmod(path, 0o640)
        with self.assertRaises(vaults.VaultError) as e:
            vaults.load_key_file(path)
        self.assertIn(path, str(e.exception))
        self.assertIn("accessible by other users", str(e.exception))
        os.chmod(path, 0o600)
        with self.assertRaises(FileExistsError):
            vaults.create_key_file(path)  # never overwrites a key

    def test_the_rpc_secret_file_is_refused_when_others_can_read_it(self):
        from powerctl.config import ConfigError, read_secret

        path = os.path.join(self.directory, "secret")
        with open(path, "wb") as f:
            f.write(b"a-secret-of-enough-bytes")
        os.chmod(path, 0o644)
        with self.assertRaises(ConfigError) as e:
            read_secret(path)
        self.assertIn(path, str(e.exception))
        os.chmod(path, 0o600)
        self.assertEqual(read_secret(path), b"a-secret-of-enough-bytes")

    def test_add_then_drop(self):
        path = os.path.join(self.directory, "k")
        first = vaults.create_key_file(path)
        both = vaults.add_key(path)
        self.assertEqual((len(both.keys), both.keys[1]), (2, first.keys[0]))
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        vaults.drop_old_keys(path)
        self.assertEqual(vaults.load_key_file(path).keys, both.keys[:1])


class FileVaultTests(unittest.TestCase):
    """Issue 10: a running region follows its key file (no restart for add/rotate)."""

    def setUp(self):
        self.directory = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, self.directory)
        self.path = os.path.join(self.directory, "k")
        self.first = vaults.create_key_file(self.path)
        self.events = []
        from twisted.logger import Logger

        self.vault = vaults.FileVault(self.path, log=Logger(observer=self.events.append))

    def test_a_new_first_key_seals_at_once_and_the_old_one_still_opens(self):
        before = self.vault.seal("pw1")
        both = vaults.add_key(self.path)
        after = self.vault.seal("pw2")
        self.assertEqual(vaults.Vault(both.keys[:1]).open(after), "pw2")
        self.assertEqual(self.vault.open(before), "pw1")
        vaults.drop_old_keys(self.path)
        with self.assertRaises(vaults.VaultError):
            self.vault.open(before)  # the old key is gone from the file: gone here too
        self.assertEqual(self.vault.open(after), "pw2")

    def test_an_unknown_key_reads_the_file_again_whatever_its_stat_says(self):
        info = os.stat(self.path)
        newer = vaults.Vault.generate()
        with open(self.path, "r+b") as f:  # same inode, size and mode
            f.write(newer.keys[0] + b"\n")
        os.utime(self.path, ns=(info.st_atime_ns, info.st_mtime_ns))
        self.assertEqual(self.vault.open(newer.seal("pw")), "pw")

    def test_a_file_that_became_unusable_keeps_the_keys_loaded(self):
        sealed = self.vault.seal("pw")
        vaults.add_key(self.path)
        os.chmod(self.path, 0o644)
        for _ in range(3):
            self.assertEqual(self.vault.open(sealed), "pw")
            self.assertEqual(vaults.Vault(self.first.keys).open(self.vault.seal("x")), "x")
        errors = [formatEvent(e) for e in self.events if e["log_level"].name == "error"]
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("accessible by other users", errors[0])
        self.assertNotIn(self.first.keys[0].decode(), "".join(errors))


def dump(test):
    """The whole database as ``pg_dump`` writes it."""
    done = subprocess.run([os.path.join(test.pg.bindir, "pg_dump"), "-d", test.dsn],
                          capture_output=True, timeout=60, check=True)
    return done.stdout.decode("utf-8", "replace")


class AtRestSystemTests(SystemMixin, DatabaseMixin, unittest.TestCase):
    """A region over real PostgreSQL and a pserv driving the Redfish simulator."""

    nodes = ("node1", "node2")
    async def test_a_dump_holds_no_secret_and_the_pserv_still_gets_them(self):
        lines = []

        def observe(event):
            lines.append(formatEvent(event))
            failure = event.get("log_failure")
            if failure is not None:
                lines.append(failure.getTraceback())

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        await self.start_region()
        await self.start_pserv()
        await wait_until(self.connected_pservs)
        await self.add_node("node1")  # Redfish password "sim-pass"
        code, body = await self.call("POST", "/v1/nodes", {"name": "hook", "cluster": "c1",
                                     "power": {"mode": "single", "agents": [{
                                         "driver": "webhook", "params": {
                                             "on_url": "http://127.0.0.1:1/on",
                                             "off_url": "http://127.0.0.1:1/off",
                                             "password": "hook-pass-1",
                                             "headers": {"Authorization": "Bearer hdr-tok-9"}}}]}})
        self.assertEqual(code, 201, body)
        self.assertEqual(body["power"]["agents"][0]["params"]["headers"], "(set)")
        code, body = await self.call("POST", "/v1/pod_managers", {
            "name": "pm1", "url": "https://127.0.0.1:1", "username": "u",
            "password": "pm-pass-7"})
        self.assertEqual(code, 201, body)
        text = dump(self)
        self.assertIn("node1", text)  # it is a dump of this database
        for secret in ("sim-pass", "hook-pass-1", "hdr-tok-9", "pm-pass-7", self.token):
            self.assertNotIn(secret, text)
        # the pserv receives the real password: the BMC accepts the request
        op = await self.power("node1", "on")
        done = await self.wait_op(op["id"])
        self.assertEqual(done["state"], "succeeded", done)
        # a GET and a PUT back of the redacted configuration keep the secret
        node = await self.get("/v1/nodes/node1")
        code, _ = await self.call("PUT", "/v1/nodes/node1", {"power": node["power"]})
        self.assertEqual(code, 200)
        op = await self.power("node1", "off")
        self.assertEqual((await self.wait_op(op["id"]))["state"], "succeeded")
        self.token, real = "pct_wrong-" + "x" * 40, self.token
        self.assertEqual((await self.call("GET", "/v1/nodes"))[0], 401)
        self.assertTrue(lines)
        logged = "\n".join(lines)
        for secret in ("sim-pass", "hook-pass-1", "hdr-tok-9", "pm-pass-7", real, self.token):
            self.assertNotIn(secret, logged)
    async def test_plain_rows_are_sealed_at_start_and_a_wrong_or_missing_key_stops_it(self):
        conn = psycopg2.connect(self.dsn)
        with conn.cursor() as cur:  # rows as an older version left them
            cur.execute("INSERT INTO clusters (name) VALUES ('c1')")
            cur.execute("INSERT INTO nodes (name, cluster, power) VALUES ('old', 'c1', %s)",
                        (json.dumps(self.redfish_power("node1")),))
            cur.execute("INSERT INTO pod_managers (uuid, name, password, url) VALUES "
                        "(gen_random_uuid(), 'pm', 'pm-old-pass', 'https://x')")
        conn.commit()
        conn.close()
        self.assertIn("sim-pass", dump(self))
        await self.start_region()
        await self.start_pserv()
        await wait_until(self.connected_pservs)
        text = dump(self)
        self.assertNotIn("sim-pass", text)
        self.assertNotIn("pm-old-pass", text)
        op = await self.power("old", "on")
        self.assertEqual((await self.wait_op(op["id"]))["state"], "succeeded")
        await self.stop_region()
        # another key, or none where sealed secrets exist: the region refuses
        other = os.path.join(os.path.dirname(self.key_file), "other.key")
        vaults.create_key_file(other)
        missing = os.path.join(os.path.dirname(self.key_file), "missing.key")
        for key_file, message in ((other, "does not open"), (missing, "does not exist")):
            settings = RegionConfig(name="r2", database=self.dsn,
                                    api_endpoint="tcp:0:interface=127.0.0.1",
                                    rpc_endpoint="tcp:0:interface=127.0.0.1",
                                    secret_file=self.secret_file, key_file=key_file)
            region = RegionService(settings, b"x" * 16, reactor, catalogue())
            region.startService()
            with self.assertRaises(vaults.VaultError) as e:
                await region.whenReady()
            self.assertIn(message, str(e.exception))
            self.assertIn(key_file if message != "does not open" else "key", str(e.exception))
            self.flushLoggedErrors(vaults.VaultError)
            await region.stopService()
    async def test_key_rotation_with_requests_in_flight(self):
        await self.start_region()
        await self.start_pserv()
        await wait_until(self.connected_pservs)
        for name in self.nodes:
            await self.add_node(name)
        old_keys = vaults.load_key_file(self.key_file).keys
        # step 1: a new key first; the region restarts with both (a rolling restart)
        self.assertEqual(await self.admin("key", "add", self.key_file), 0)
        await self.stop_region()
        await self.start_region()
        await wait_until(self.connected_pservs)
        ops = [await self.power(n, a) for a in ("on", "off", "on") for n in self.nodes]
        # step 2 while those run, then more requests
        code = await self.admin("key", "rotate", "--key-file", self.key_file,
                                "--database", self.dsn)
        self.assertEqual(code, 0, self.admin_err)
        ops += [await self.power(n, "cycle") for n in self.nodes]
        finals = [await self.wait_op(o["id"], timeout=60) for o in ops]
        self.assertEqual({f["state"] for f in finals[-2:]}, {"succeeded"}, finals)
        self.assertFalse([f for f in finals if f["state"] == "failed"], finals)
        new = vaults.load_key_file(self.key_file)
        self.assertEqual(len(new.keys), 1)
        self.assertNotIn(new.keys[0], old_keys)
        conn = psycopg2.connect(self.dsn)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT power FROM nodes")
                powers = [r[0] for r in cur.fetchall()]
        finally:
            conn.close()
        old = vaults.Vault(old_keys)
        for power in powers:
            sealed = power["agents"][0]["params"]["password"]
            self.assertEqual(new.open(sealed), "sim-pass")
            with self.assertRaises(vaults.VaultError):
                old.open(sealed)

    async def test_key_rotation_without_restarting_the_region(self):
        await self.start_region()
        await self.start_pserv()
        await wait_until(self.connected_pservs)
        await self.add_node(self.nodes[0])
        old_keys = vaults.load_key_file(self.key_file).keys
        self.assertEqual(await self.admin("key", "add", self.key_file), 0)
        await self.add_node(self.nodes[1])  # sealed with the new key at once
        code = await self.admin("key", "rotate", "--key-file", self.key_file,
                                "--database", self.dsn)
        self.assertEqual(code, 0, self.admin_err)
        new = vaults.load_key_file(self.key_file)
        self.assertNotIn(new.keys[0], old_keys)
        ops = [await self.power(n, "on") for n in self.nodes]
        finals = [await self.wait_op(o["id"], timeout=60) for o in ops]
        self.assertEqual({f["state"] for f in finals}, {"succeeded"}, finals)
        code, _ = await self.call("PUT", f"/v1/nodes/{self.nodes[0]}",
                                  {"power": self.redfish_power(self.nodes[0])})
        self.assertEqual(code, 200)

    async def admin(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        ctx = Context(reactor, stdout=out, stderr=err, env={})
        code = await run_cli(["admin", *argv], reactor, ctx)
        self.admin_err = err.getvalue()
        return code


class KeyCommandTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_key_init_refuses_to_overwrite(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, directory)
        path = os.path.join(directory, "k")
        for expected in (0, 2):
            out, err = io.StringIO(), io.StringIO()
            code = yield run_cli(["admin", "key", "init", path], reactor,
                                 Context(reactor, stdout=out, stderr=err, env={}))
            self.assertEqual(code, expected, err.getvalue())
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
