"""
Secrets at rest (issue 10): BMC and PDU passwords, SNMP communities and
keys, webhook headers and pod manager passwords are kept in PostgreSQL
encrypted with Fernet (AES-128-CBC plus HMAC-SHA256, from ``cryptography``)
under a key the region reads from a file; a dump of the database alone
reveals none of them.

A sealed value is the text ``enc:v1:<fernet token>`` holding the JSON of
the plain value (so a mapping such as webhook ``headers`` seals too).  The
store seals a power configuration's secret parameters after it validated
them (:meth:`Vault.seal_power`, which keeps the stored ciphertext of a
secret that did not change, so an unchanged configuration compares equal)
and opens them only to resolve a configuration for a pserv
(:meth:`Vault.open_power`).  What the API shows is redacted as before.

A key file holds one or more Fernet keys, one per line: the first seals,
every one opens (:class:`cryptography.fernet.MultiFernet`), which is how a
key is rotated without downtime -- put the new key first on every region,
re-seal (``powerctl admin key rotate``), then drop the old one.

Pure apart from :func:`load_key_file`, :func:`create_key_file` and
:func:`seal_existing` (files and the database).
"""

import copy
import json
import os
import stat

import attrs
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from powerctl.powerdoc import agent_list

PREFIX = "enc:v1:"
#: Parameters sealed whatever their driver's schema says (they carry credentials).
ALWAYS_SECRET = frozenset({"headers"})
#: Where a region without ``key_file`` keeps the key it creates on an empty database.
DEFAULT_KEY_FILE = "/var/lib/powerctl/secrets.key"


class VaultError(Exception):
    """A key is missing, unreadable, too open, or does not open the stored secrets."""


def is_sealed(value):
    return isinstance(value, str) and value.startswith(PREFIX)


def _secret_names(catalogue, agent):
    from powerctl.region.powerconfig import _secrets_of

    params = agent.get("params") or {}
    return set(_secrets_of(catalogue, agent.get("driver"), params)) | ALWAYS_SECRET


@attrs.frozen
class Vault:
    """Seals and opens secrets with ``keys`` (Fernet keys; the first seals)."""

    keys: tuple = attrs.field(converter=tuple, repr=False)
    _fernet: MultiFernet = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self):
        if not self.keys:
            raise VaultError("no encryption key")
        try:
            fernet = MultiFernet([Fernet(k) for k in self.keys])
        except (ValueError, TypeError):
            raise VaultError("an encryption key is not a valid Fernet key") from None
        object.__setattr__(self, "_fernet", fernet)

    @classmethod
    def generate(cls):
        return cls([Fernet.generate_key()])

    # -- one value --------------------------------------------------------

    def seal(self, value):
        """A plain value sealed; ``""`` and None stay as they are (nothing to hide)."""
        if value is None or value == "":
            return value
        plain = json.dumps(value, separators=(",", ":")).encode("utf-8")
        return PREFIX + self._fernet.encrypt(plain).decode("ascii")

    def open(self, value):
        """A sealed value opened; anything else (not sealed yet) as it is."""
        if not is_sealed(value):
            return value
        try:
            plain = self._fernet.decrypt(value[len(PREFIX):].encode("ascii"))
        except (InvalidToken, ValueError):
            raise VaultError("a stored secret does not open with this key file (wrong or "
                             "missing key?)") from None
        return json.loads(plain)

    def reseal(self, value):
        """A sealed value under the first key (rotation); plain values are sealed."""
        return self.seal(self.open(value))

    # -- power configurations ---------------------------------------------

    def seal_power(self, power, previous, catalogue):
        """
        ``power`` (validated, plain) with its secret parameters sealed; a
        secret whose plain value equals the one sealed in ``previous`` (same
        agent index and driver) keeps that ciphertext.
        """
        if not isinstance(power, dict):
            return power
        sealed = copy.deepcopy(power)
        old_agents = agent_list(previous)
        for index, agent in enumerate(agent_list(sealed)):
            if not isinstance(agent, dict) or not isinstance(agent.get("params"), dict):
                continue
            old = old_agents[index] if index < len(old_agents) else None
            same = isinstance(old, dict) and old.get("driver") == agent.get("driver")
            old_params = (old.get("params") or {}) if same else {}
            for name in _secret_names(catalogue, agent):
                value = agent["params"].get(name)
                if value is None or value == "" or is_sealed(value):
                    continue
                kept = old_params.get(name)
                if is_sealed(kept) and self.open(kept) == value:
                    agent["params"][name] = kept
                else:
                    agent["params"][name] = self.seal(value)
        return sealed

    def open_power(self, power):
        """``power`` with every sealed parameter opened (for validation or a pserv)."""
        if not isinstance(power, dict):
            return power
        opened = copy.deepcopy(power)
        for agent in agent_list(opened):
            if isinstance(agent, dict) and isinstance(agent.get("params"), dict):
                agent["params"] = {k: self.open(v) for k, v in agent["params"].items()}
        return opened

    def reseal_power(self, power, catalogue):
        """Every secret of a stored configuration sealed under the first key."""
        return self.seal_power(self.open_power(power), None, catalogue)


class FileVault:
    """
    A :class:`Vault` that follows its key file, so ``powerctl admin key add``
    and ``rotate`` take effect on a running region without a restart.

    Before each use the file's identity (inode, size, modification time: one
    ``stat``) is compared with the one loaded; when it changed the file is
    read again -- ``key add`` puts a new first key, which seals from then on,
    and ``key rotate`` drops the old ones.  A secret that no loaded key opens
    makes it read the file again too, whatever the ``stat`` says (a change
    within the file system's time resolution).  A file that cannot be used
    any more (gone, readable by others, no valid key) is refused with one
    error logged, and the keys loaded before stay in use.
    """

    def __init__(self, path, vault=None, log=None):
        from twisted.logger import Logger

        self.path = path
        self.log = log or Logger()
        self._vault = vault if vault is not None else load_key_file(path)
        self._signature = self._stat()
        self._refused = None  # the signature of a file refused (logged once)

    def _stat(self):
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_mode)

    def reload(self, force=False):
        """Read the key file again if it changed (or ``force``); True if keys changed."""
        signature = self._stat()
        if not force and signature == self._signature:
            return False
        if not force and signature == self._refused:
            return False
        try:
            vault = load_key_file(self.path)
        except (VaultError, OSError) as e:
            if signature != self._refused:
                self._refused = signature
                self.log.error("the key file changed but cannot be used ({why}); keeping the "
                               "{n} key(s) loaded before", why=e, n=len(self._vault.keys))
            return False
        self._signature, self._refused = signature, None
        if vault.keys == self._vault.keys:
            return False
        self._vault = vault
        self.log.info("key file {path} read again: {n} key(s), the first one seals",
                      path=self.path, n=len(vault.keys))
        return True

    def _current(self):
        self.reload()
        return self._vault

    def _retrying(self, name, *args):
        try:
            return getattr(self._current(), name)(*args)
        except VaultError:
            if not self.reload(force=True):
                raise
            return getattr(self._vault, name)(*args)

    @property
    def keys(self):
        return self._current().keys

    def seal(self, value):
        return self._current().seal(value)

    def open(self, value):
        return self._retrying("open", value)

    def reseal(self, value):
        return self._retrying("reseal", value)

    def seal_power(self, power, previous, catalogue):
        return self._retrying("seal_power", power, previous, catalogue)

    def open_power(self, power):
        return self._retrying("open_power", power)

    def reseal_power(self, power, catalogue):
        return self._retrying("reseal_power", power, catalogue)


# -- key files ---------------------------------------------------------------

def check_private(path, what="key file"):
    """Refuse (VaultError) a secret file other users may read or write."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise VaultError(f"{what} {path}: {e.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise VaultError(f"{what} {path} is accessible by other users (mode "
                         f"{stat.S_IMODE(mode):04o}); refusing to use it: chmod 600 {path}")


def load_key_file(path):
    """The :class:`Vault` of a key file (one key per line, the first seals)."""
    check_private(path)
    with open(path, "rb") as f:
        keys = [line.strip() for line in f.read().splitlines() if line.strip()]
    if not keys:
        raise VaultError(f"key file {path} holds no key")
    try:
        return Vault(keys)
    except VaultError as e:
        raise VaultError(f"key file {path}: {e}") from None


def create_key_file(path):
    """Write a new key file (mode 0600, directory 0700 when created); its Vault."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700)
    key = Fernet.generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key + b"\n")
    return Vault([key])


def add_key(path):
    """Put a new first key in an existing key file (rotation, step 1); its Vault."""
    vault = load_key_file(path)
    key = Fernet.generate_key()
    temporary = path + ".new"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(b"\n".join([key, *vault.keys]) + b"\n")
    os.replace(temporary, path)
    return load_key_file(path)


def drop_old_keys(path):
    """Keep only the first key of a key file (rotation, last step)."""
    vault = load_key_file(path)
    temporary = path + ".new"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(vault.keys[0] + b"\n")
    os.replace(temporary, path)


# -- the database (psycopg2, blocking: start-up and admin commands) ----------

def sealed_secrets_exist(conn):
    """Whether any secret in the database is sealed (so a key is needed)."""
    with conn.cursor() as cur:
        cur.execute("SELECT EXISTS (SELECT 1 FROM pod_managers WHERE password LIKE %s)"
                    " OR EXISTS (SELECT 1 FROM nodes WHERE power::text LIKE %s)",
                    (PREFIX + "%", "%" + PREFIX + "%"))
        return cur.fetchone()[0]


def seal_existing(conn, vault, catalogue, reseal=False):
    """
    Seal every secret still stored in plain text (the migration of existing
    rows), or with ``reseal`` re-seal every one under the vault's first key
    (rotation); each row in its own short transaction under its row lock,
    so requests go on meanwhile.  Checks first that the vault opens what is
    sealed.  Returns the number of rows changed.
    """
    if reseal:
        power_of = lambda power: vault.reseal_power(power, catalogue)  # noqa: E731
        password_of = vault.reseal
    else:
        power_of = lambda power: vault.seal_power(  # noqa: E731
            vault.open_power(power), power, catalogue)
        password_of = lambda p: p if is_sealed(p) else vault.seal(p)  # noqa: E731
    return (_rewrite_each(conn, "nodes", "name", "power", power_of, json.dumps)
            + _rewrite_each(conn, "pod_managers", "uuid", "password", password_of))


def _rewrite_each(conn, table, key, column, rewrite, encode=lambda v: v):
    """
    ``column`` of every row of ``table`` through ``rewrite``, one short
    transaction per row under its row lock; the number of rows changed.
    """
    with conn.cursor() as cur:
        cur.execute(f"SELECT {key} FROM {table} ORDER BY {key}")
        keys = [r[0] for r in cur.fetchall()]
    conn.commit()
    changed = 0
    for each in keys:
        with conn.cursor() as cur:
            cur.execute(f"SELECT {column} FROM {table} WHERE {key} = %s FOR UPDATE", (each,))
            row = cur.fetchone()
            if row is not None:
                new = rewrite(row[0])
                if new != row[0]:
                    cur.execute(f"UPDATE {table} SET {column} = %s WHERE {key} = %s",
                                (encode(new), each))
                    changed += 1
        conn.commit()
    return changed


def check_opens(conn, vault):
    """VaultError unless ``vault`` opens a sample of what is sealed in the database."""
    with conn.cursor() as cur:
        cur.execute("SELECT password FROM pod_managers WHERE password LIKE %s LIMIT 1",
                    (PREFIX + "%",))
        samples = [r[0] for r in cur.fetchall()]
        cur.execute("SELECT power FROM nodes WHERE power::text LIKE %s LIMIT 1",
                    ("%" + PREFIX + "%",))
        powers = [r[0] for r in cur.fetchall()]
    conn.rollback()
    for power in powers:
        for agent in power.get("agents", []):
            samples.extend(v for v in (agent.get("params") or {}).values() if is_sealed(v))
    for value in samples[:3]:
        vault.open(value)
