"""
powerctl as a user gets it: build the sdist and the wheel, install the wheel
(not editable) into a fresh virtualenv, and use the installed product.

The rest of the suite runs against the editable checkout, which hides
packaging mistakes: a directory without ``__init__.py`` or data files left
out of the wheel still import there, and twistd finds the plugin through the
checkout on ``sys.path``.  Here nothing of the checkout is importable: the
commands run from an empty directory with ``python -I``, and the tests check
that ``powerctl`` comes from the fresh virtualenv.

The build runs once per test run (a module-level cache shared by the tests):
``python -m build --no-isolation`` builds the sdist, then the wheel from the
sdist (so the sdist must be complete too), with this virtualenv's setuptools
and wheel, from a copy of the files git knows (tracked, or untracked and not
ignored) so the checkout is left untouched.  The fresh virtualenv's pip
then fetches powerctl's dependencies: from a package index, or pip's cache.
That must work; a failure says so and fails (never skips).

Measured on the development machine (pip cache warm): build ~4 s, venv ~6
s, ``pip install`` of the wheel and its dependencies ~10 s, the checks ~5 s;
the whole module ~25 s.
"""

import atexit
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

from twisted.trial import unittest

ROOT = Path(__file__).resolve().parent.parent

BUILD_TIMEOUT = 300
VENV_TIMEOUT = 180
INSTALL_TIMEOUT = 600
RUN_TIMEOUT = 120

#: The standard drivers ``powerctl driver list`` must show.
DRIVERS = ("ipmi", "manual", "redfish", "snmp", "webhook")
#: The twistd plugin: where the wheel must put it (and never an __init__.py
#: beside it, which would overwrite Twisted's own ``twisted.plugins``).
PLUGIN = "twisted/plugins/powerctl_plugins.py"

#: Not copied when git cannot list the files (e.g. tests run from an sdist).
_NOT_SOURCE_DIRS = {".git", "build", "dist", "__pycache__", ".hypothesis", ".pytest_cache", "state"}
_NOT_SOURCE_FILES = {"dropin.cache"}

#: Texts of pip's output meaning it reached no package index.
_NETWORK_TEXTS = (
    "No matching distribution found", "Could not find a version",
    "Failed to establish a new connection", "Temporary failure in name resolution",
    "Network is unreachable", "ProxyError", "ConnectTimeout", "ReadTimeout",
    "Max retries exceeded", "SSLError",
)


class PackagingFailure(Exception):
    """Building or installing failed; the message says what and why."""


def _clean_env():
    """This environment without what would let the checkout leak in."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH",
                 "VIRTUAL_ENV", "PYTHONNOUSERSITE"):
        env.pop(name, None)
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _tail(text, lines=40):
    return "\n".join((text or "").splitlines()[-lines:])


def _run(argv, cwd, timeout, what):
    """Run ``argv``; a :class:`subprocess.CompletedProcess` or PackagingFailure."""
    try:
        return subprocess.run(
            [str(a) for a in argv], cwd=cwd, env=_clean_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        output = e.output.decode(errors="replace") if isinstance(e.output, bytes) else e.output
        raise PackagingFailure(f"{what}: no result after {timeout}s\n{_tail(output)}") from None


def source_files():
    """
    The project's files, relative to the checkout, as posix strings: what
    git tracks plus untracked files it does not ignore (so a file not yet
    added is checked too), or, without git, a walk that skips build output.
    """
    if (ROOT / ".git").exists() and shutil.which("git"):
        listed = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
             "--exclude-standard"],
            stdout=subprocess.PIPE, check=True, timeout=60,
        ).stdout.decode().split("\0")
        names = {n for n in listed if n and (ROOT / n).is_file()}
    else:
        names = set()
        for here, dirs, files in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in _NOT_SOURCE_DIRS
                       and not d.startswith((".venv", "_trial_temp", "tests."))
                       and not d.endswith(".egg-info")]
            for f in files:
                if f not in _NOT_SOURCE_FILES and not f.endswith((".pyc", ".pyo")):
                    names.add(Path(here, f).relative_to(ROOT).as_posix())
    return sorted(n for n in names if "__pycache__" not in n.split("/"))


def runtime_files(files):
    """What the installed package needs: every project file under powerctl/."""
    return [n for n in files if n.startswith("powerctl/")]


def module_names(files):
    """The dotted names of the modules of powerctl, from its .py files."""
    names = []
    for n in runtime_files(files):
        if n.endswith(".py"):
            parts = n[:-3].split("/")
            if parts[-1] == "__init__":
                parts.pop()
            names.append(".".join(parts))
    return sorted(names)


class Installed:
    """The built distributions and the fresh virtualenv holding the wheel."""

    def __init__(self):
        self.timings = {}
        self.base = Path(tempfile.mkdtemp(prefix="powerctl-wheel-"))
        atexit.register(shutil.rmtree, self.base, ignore_errors=True)
        self.files = source_files()
        self.source = self.base / "src"
        self.dist = self.base / "dist"
        self.venv = self.base / "venv"
        # Commands run from here: not the checkout, nothing importable.
        self.cwd = self.base / "elsewhere"
        self.cwd.mkdir()
        self._copy_source()
        self._timed("build", self._build)
        self._timed("venv", self._make_venv)
        self._timed("install", self._install)

    def _timed(self, name, step):
        start = time.monotonic()
        step()
        self.timings[name] = round(time.monotonic() - start, 1)

    def _copy_source(self):
        for name in self.files:
            target = self.source / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target)

    def _build(self):
        if importlib.util.find_spec("build") is None:
            raise PackagingFailure(
                "the `build` package is missing from this virtualenv: it is in the "
                "test extras, install them with `make setup` (pip install -e '.[test]')"
            )
        done = _run([sys.executable, "-m", "build", "--no-isolation", "--outdir",
                     self.dist, self.source], self.source, BUILD_TIMEOUT,
                    "python -m build")
        if done.returncode != 0:
            raise PackagingFailure(
                f"python -m build --no-isolation failed ({done.returncode}):\n"
                f"{_tail(done.stdout)}")
        wheels = list(self.dist.glob("powerctl-*.whl"))
        sdists = list(self.dist.glob("powerctl-*.tar.gz"))
        if len(wheels) != 1 or len(sdists) != 1:
            raise PackagingFailure(f"expected one wheel and one sdist, got {wheels} {sdists}")
        self.wheel, self.sdist = wheels[0], sdists[0]

    def _make_venv(self):
        done = _run([sys.executable, "-m", "venv", self.venv], self.cwd, VENV_TIMEOUT,
                    "python -m venv")
        if done.returncode != 0:
            raise PackagingFailure(f"python -m venv failed:\n{_tail(done.stdout)}")

    def _install(self):
        done = _run([self.bin("python"), "-m", "pip", "install", "--no-input",
                     "--disable-pip-version-check", self.wheel], self.cwd, INSTALL_TIMEOUT,
                    "pip install of the wheel into a fresh virtualenv")
        if done.returncode != 0:
            hint = ""
            if any(t in done.stdout for t in _NETWORK_TEXTS):
                hint = ("the fresh virtualenv could not get powerctl's dependencies: "
                        "no package index (or pip cache / find-links) reachable from "
                        "here? This test needs one; it does not skip.\n")
            raise PackagingFailure(
                f"{hint}pip install {self.wheel.name} into a fresh virtualenv failed "
                f"({done.returncode}):\n{_tail(done.stdout)}")

    def bin(self, name):
        return self.venv / "bin" / name

    def run(self, *argv):
        """Run an installed command from outside the checkout."""
        return _run(argv, self.cwd, RUN_TIMEOUT, " ".join(map(str, argv)))


_installed = None


def installed():
    """The one :class:`Installed` of this run (a failure is kept and repeated)."""
    global _installed
    if _installed is None:
        try:
            _installed = Installed()
        except PackagingFailure as e:
            _installed = e
    if isinstance(_installed, PackagingFailure):
        raise unittest.FailTest(str(_installed))
    return _installed


#: Run by the fresh virtualenv's python: import everything, report as JSON.
IMPORT_ALL = r"""
import importlib, json, pkgutil, sys, traceback

from powerctl import reactor as reactor_choice

reactor_choice.install()   # as every entry point does first

import powerctl

report = {"powerctl": powerctl.__file__, "modules": [], "errors": {}}

def failed(name):
    report["errors"][name] = traceback.format_exc()

for info in pkgutil.walk_packages(powerctl.__path__, "powerctl.", onerror=failed):
    try:
        importlib.import_module(info.name)
    except BaseException:
        failed(info.name)
    else:
        report["modules"].append(info.name)

import twisted.plugins.powerctl_plugins as plugin
from powerctl.region import schema

report["plugin"] = plugin.__file__
report["migrations"] = [m.name for m in schema.migrations()]
json.dump(report, sys.stdout)
"""


class SourceLayoutTests(unittest.TestCase):
    """What the build relies on, checked without building."""

    maxDiff = None

    def test_every_package_directory_has_init(self):
        files = set(source_files())
        missing = set()
        for n in runtime_files(files):
            if n.endswith(".py"):
                for folder in Path(n).parents:
                    if folder == Path("."):
                        break
                    if f"{folder.as_posix()}/__init__.py" not in files:
                        missing.add(folder.as_posix())
        self.assertEqual(sorted(missing), [], "folders of powerctl modules without "
                         "__init__.py: a plain install leaves their modules out")

    def test_plugin_folder_is_not_a_package(self):
        files = set(source_files())
        self.assertIn(PLUGIN, files)
        self.assertNotIn("twisted/__init__.py", files)
        self.assertNotIn("twisted/plugins/__init__.py", files)


class WheelTests(unittest.TestCase):
    """The wheel installed into a fresh virtualenv, and the sdist."""

    maxDiff = None

    def setUp(self):
        self.inst = installed()

    def test_wheel_holds_every_runtime_file(self):
        with zipfile.ZipFile(self.inst.wheel) as z:
            names = set(z.namelist())
        missing = sorted(set(runtime_files(self.inst.files)) - names)
        self.assertEqual(missing, [], "files under powerctl/ not in the wheel")
        self.assertIn(PLUGIN, names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        strays = sorted(n for n in names if not (
            n.startswith("powerctl/") or n == PLUGIN or n.startswith("powerctl-")))
        self.assertEqual(strays, [], "unexpected files in the wheel")

    def test_sdist_holds_tests_config_and_plugin(self):
        with tarfile.open(self.inst.sdist) as t:
            prefix = t.getnames()[0].split("/")[0]
            names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
        wanted = [n for n in self.inst.files
                  if n.startswith(("powerctl/", "tests/", "etc/", "twisted/"))]
        wanted += ["README.rst", "setup.cfg", "setup.py", "MANIFEST.in", PLUGIN]
        self.assertTrue(any(n.startswith("tests/test_") for n in wanted))
        self.assertTrue(any(n.startswith("etc/") for n in wanted))
        missing = sorted(set(wanted) - names)
        self.assertEqual(missing, [], f"files missing from the sdist {prefix}")

    def test_twistd_lists_both_daemons(self):
        done = self.inst.run(self.inst.bin("twistd"), "--help")
        self.assertEqual(done.returncode, 0, done.stdout)
        self.assertIn("powerctl-region", done.stdout)
        self.assertIn("powerctl-pserv", done.stdout)

    def test_daemon_help(self):
        for daemon in ("powerctl-pserv", "powerctl-region"):
            done = self.inst.run(self.inst.bin("twistd"), "-n", daemon, "--help")
            self.assertEqual(done.returncode, 0, done.stdout)
            self.assertIn(f"Usage: twistd [options] {daemon}", done.stdout)
            self.assertIn("--config", done.stdout)

    def test_driver_list(self):
        done = self.inst.run(self.inst.bin("powerctl"), "driver", "list")
        self.assertEqual(done.returncode, 0, done.stdout)
        listed = {line.split()[0] for line in done.stdout.splitlines()[1:] if line.strip()}
        self.assertEqual(listed, set(DRIVERS), done.stdout)

    def test_every_module_imports_from_the_venv(self):
        done = self.inst.run(self.inst.bin("python"), "-I", "-c", IMPORT_ALL)
        self.assertEqual(done.returncode, 0, done.stdout)
        report = json.loads(done.stdout)
        self.assertEqual(report["errors"], {})
        venv = str(self.inst.venv.resolve())
        self.assertTrue(str(Path(report["powerctl"]).resolve()).startswith(venv + os.sep),
                        report["powerctl"])
        self.assertTrue(str(Path(report["plugin"]).resolve()).startswith(venv + os.sep),
                        report["plugin"])
        missing = sorted(set(module_names(self.inst.files)) - set(report["modules"]) - {"powerctl"})
        self.assertEqual(missing, [], "modules of the checkout not importable when installed")
        shipped = sorted(Path(n).name for n in self.inst.files
                         if n.startswith("powerctl/region/migrations/") and n.endswith(".sql"))
        self.assertEqual(report["migrations"], shipped)
