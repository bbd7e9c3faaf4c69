"""
The ``powerctl`` command line.

Every command is a coroutine over a :class:`Context` (streams, environment,
reactor, interruption) that returns an exit status.  Nothing writes to
``sys.stdout`` or reads ``sys.stdin`` directly, so the whole CLI runs
in-process in tests (:func:`powerctl.cli.main.run`) exactly as it does in a
terminal (:func:`powerctl.cli.main.main`).

Exit statuses are part of the interface (scripts and fence wrappers branch
on them), so they live here, in one table:

===  =====================================================================
 0   success
 1   any other failure (an operation failed, was cancelled or superseded;
     the API refused a request; several different failures)
 2   usage or configuration error: bad arguments, unknown driver, invalid
     parameters -- nothing was sent to any device
 3   authentication refused
 4   unreachable (device or region API)
 5   timeout
 6   protocol error (an answer we could not understand)
 7   unsupported (the device or driver cannot do that)
130  interrupted (Ctrl-C / SIGTERM) before the command finished
===  =====================================================================
"""

import getpass
import os
import sys

import attrs

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_UNREACHABLE = 4
EXIT_TIMEOUT = 5
EXIT_PROTOCOL = 6
EXIT_UNSUPPORTED = 7
EXIT_INTERRUPTED = 130

#: Error kinds (``PowerError.kind`` and the CLI's own) to exit statuses.
EXIT_BY_KIND = {
    "usage": EXIT_USAGE,
    "config": EXIT_USAGE,
    "auth": EXIT_AUTH,
    "unreachable": EXIT_UNREACHABLE,
    "timeout": EXIT_TIMEOUT,
    "protocol": EXIT_PROTOCOL,
    "unsupported": EXIT_UNSUPPORTED,
    "interrupted": EXIT_INTERRUPTED,
}


def exit_status(kind):
    """The exit status for an error ``kind`` (1 for anything unlisted)."""
    return EXIT_BY_KIND.get(kind, EXIT_FAILURE)


def combine(statuses):
    """
    One exit status for several results (bulk commands): 0 if all are 0,
    the common status if every failure agrees, 1 when they differ.
    """
    failures = {s for s in statuses if s}
    if not failures:
        return EXIT_OK
    return failures.pop() if len(failures) == 1 else EXIT_FAILURE


class CliError(Exception):
    """
    A failure the CLI reports as one line, ``error (<kind>): <message>``,
    and turns into :func:`exit_status` of ``kind``.
    """

    def __init__(self, message, kind="error"):
        super().__init__(message)
        self.kind = kind

    @property
    def status(self):
        return exit_status(self.kind)


class UsageError(CliError):
    """Bad arguments, found before anything was sent anywhere."""

    def __init__(self, message):
        super().__init__(message, "usage")


class Interrupted(CliError):
    """The user asked us to stop (Ctrl-C, SIGTERM)."""

    def __init__(self, message="interrupted"):
        super().__init__(message, "interrupted")


@attrs.define
class Context:
    """
    What a command may touch: its streams, environment and reactor, plus
    the interruption hook that :func:`powerctl.cli.main.main` fires on
    SIGINT/SIGTERM so a command can clean up (close sessions, stop a
    simulator) before the process exits.
    """

    reactor: object
    stdout: object = attrs.field(factory=lambda: sys.stdout)
    stderr: object = attrs.field(factory=lambda: sys.stderr)
    stdin: object = attrs.field(factory=lambda: sys.stdin)
    env: dict = attrs.field(factory=lambda: dict(os.environ))
    #: ``prompt -> str`` without echo; tests substitute it.
    getpass: object = getpass.getpass
    #: The ``IAgent`` the REST commands reach the region API through; None
    #: for a pooled HTTP agent on ``reactor`` (tests give one that serves
    #: the real API resource in memory).
    agent: object = None
    interrupted: bool = False
    _hooks: list = attrs.field(factory=list)

    def out(self, text=""):
        """A line on stdout (results: what scripts read)."""
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def err(self, text=""):
        """A line on stderr (errors, progress, hints)."""
        self.stderr.write(text + "\n")
        self.stderr.flush()

    def fail(self, kind, message):
        """Report a failure in the one documented format; its exit status."""
        self.err(f"error ({kind}): {message}")
        return exit_status(kind)

    def isatty(self, stream):
        try:
            return bool(stream.isatty())
        except (AttributeError, ValueError):
            return False

    def on_interrupt(self, hook):
        """Call ``hook()`` on interruption (at once if already interrupted)."""
        if self.interrupted:
            hook()
        else:
            self._hooks.append(hook)
        return lambda: hook in self._hooks and self._hooks.remove(hook)

    def interrupt(self):
        """Ask the running command to stop; called once per signal."""
        self.interrupted = True
        hooks, self._hooks = self._hooks, []
        for hook in hooks:
            hook()
