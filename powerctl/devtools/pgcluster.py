"""
A private, throwaway PostgreSQL cluster: for the test suite and ``powerctl demo``.

The cluster listens on a unix socket only (no TCP), runs with fsync off and
is torn down by a small *reaper* process that watches a pipe from us: when
the pipe closes -- because we called :meth:`PostgresCluster.stop`, exited
normally, crashed, or were killed with SIGKILL -- the reaper stops the
postmaster and removes the directory.  That is what makes "always stopped
and removed at the end, also when tests are interrupted" true without
relying on ``atexit`` alone.

PostgreSQL refuses to run as root.  When we are root the cluster directory
is handed to the unprivileged ``postgres`` system user and the server
binaries run through ``runuser``; root can still connect to the socket.
"""

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile

import attrs

SUPERUSER = "postgres"


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries (initdb, pg_ctl) cannot be found or run."""


def find_bindir(environ=os.environ):
    """
    Find the directory holding ``initdb`` and ``pg_ctl``.

    ``POWERCTL_PG_BIN`` wins; then ``initdb`` on ``PATH``; then the newest
    ``/usr/lib/postgresql/*/bin`` (where Debian puts them, off ``PATH``).
    """
    explicit = environ.get("POWERCTL_PG_BIN")
    candidates = [explicit] if explicit else []
    on_path = shutil.which("initdb", path=environ.get("PATH"))
    if on_path:
        candidates.append(os.path.dirname(os.path.realpath(on_path)))

    def version(path):
        try:
            return int(path.split("/")[-2])
        except ValueError:
            return 0

    candidates.extend(
        sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    )
    for bindir in candidates:
        if all(os.access(os.path.join(bindir, tool), os.X_OK) for tool in ("initdb", "pg_ctl")):
            return bindir
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in "
        "/usr/lib/postgresql/*/bin; install them (Debian: apt-get install -y "
        "postgresql) or set POWERCTL_PG_BIN"
    )


def _service_user():
    """The unprivileged account to run the server as, or None when not root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise PostgresUnavailable(
            "running as root, and PostgreSQL refuses root: a 'postgres' system "
            "user is needed (the Debian postgresql package creates it)"
        )


@attrs.define
class PostgresCluster:
    """
    One PostgreSQL cluster in ``directory``, listening on a socket in it.

    Use :meth:`create` to make a new one; :meth:`stop` (idempotent) to
    remove it.  ``keep=True`` keeps the data directory across runs (the demo
    uses that for its state directory); the server is still stopped.
    """

    directory: str
    bindir: str
    keep: bool = False
    _reaper: subprocess.Popen | None = attrs.field(default=None, repr=False)

    @property
    def datadir(self):
        return os.path.join(self.directory, "data")

    @property
    def socket_dir(self):
        return self.directory

    @classmethod
    def create(cls, directory=None, keep=False, bindir=None):
        bindir = bindir or find_bindir()
        if directory is None:
            directory = tempfile.mkdtemp(prefix="powerctl-pg-")
        else:
            os.makedirs(directory, exist_ok=True)
        cluster = cls(directory=os.path.abspath(directory), bindir=bindir, keep=keep)
        cluster._start()
        return cluster

    def _run(self, *argv):
        user = _service_user()
        command = [os.path.join(self.bindir, argv[0]), *argv[1:]]
        if user is not None:
            command = ["runuser", "-u", user.pw_name, "--", *command]
        result = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise PostgresUnavailable(
                f"{argv[0]} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-2000:]}"
            )
        return result

    def _start(self):
        user = _service_user()
        if user is not None:
            os.chown(self.directory, user.pw_uid, user.pw_gid)
            os.chmod(self.directory, 0o700)
            check = subprocess.run(
                ["runuser", "-u", user.pw_name, "--", "test", "-x", self.directory],
                stdin=subprocess.DEVNULL, capture_output=True,
            )
            if check.returncode != 0:
                raise PostgresUnavailable(
                    f"the {user.pw_name} user cannot reach {self.directory}: a parent "
                    "directory is not traversable; choose a directory under /tmp or "
                    "one whose parents are world-executable"
                )
        if not os.path.exists(os.path.join(self.datadir, "PG_VERSION")):
            self._run(
                "initdb", "-D", self.datadir, "-U", SUPERUSER, "--auth=trust",
                "--no-sync", "-E", "UTF8", "--locale=C",
            )
            with open(os.path.join(self.datadir, "postgresql.conf"), "a") as conf:
                conf.write(
                    "\n# powerctl private cluster\n"
                    "listen_addresses = ''\n"
                    f"unix_socket_directories = '{self.socket_dir}'\n"
                    "fsync = off\nfull_page_writes = off\nsynchronous_commit = off\n"
                    "max_connections = 200\n"
                )
        # The reaper is started before the server so that there is no moment
        # at which a running server has nobody to stop it.
        self._reaper = subprocess.Popen(
            [sys.executable, "-m", "powerctl.devtools.pgcluster", "reap", self.bindir,
             self.directory, "keep" if self.keep else "remove"],
            stdin=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C on the terminal must not kill it first
        )
        self._run(
            "pg_ctl", "-D", self.datadir, "-w", "-s", "-l",
            os.path.join(self.directory, "server.log"), "start",
        )

    def dsn(self, dbname="postgres"):
        """A libpq connection string for ``dbname`` on this cluster."""
        return f"host={self.socket_dir} dbname={dbname} user={SUPERUSER}"

    def stop(self):
        """Stop the server and (unless ``keep``) remove the directory."""
        reaper, self._reaper = self._reaper, None
        if reaper is None:
            return
        reaper.stdin.close()
        reaper.wait(timeout=60)


def _reap(bindir, directory, mode):
    """
    Wait until our parent closes stdin (on purpose or by dying), then stop
    the server immediately and remove its directory.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.stdin.buffer.read()
    datadir = os.path.join(directory, "data")
    command = [os.path.join(bindir, "pg_ctl"), "-D", datadir, "-s", "-m", "immediate", "stop"]
    user = _service_user()
    if user is not None:
        command = ["runuser", "-u", user.pw_name, "--", *command]
    if os.path.exists(os.path.join(datadir, "postmaster.pid")):
        subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True)
    if mode == "remove":
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__" and sys.argv[1:2] == ["reap"]:
    _reap(*sys.argv[2:5])
