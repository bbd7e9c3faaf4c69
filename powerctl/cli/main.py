"""
Entry point of ``powerctl``: argument parsing and the process around the
commands.

:func:`run` parses ``argv`` and runs one command on an already running
reactor, returning a Deferred of the exit status; it never raises, never
calls ``sys.exit`` and never touches the real streams unless given them,
so tests drive the whole CLI in-process.  :func:`main` is the console
script: it installs the asyncio reactor (pysnmp needs it) and hands
:func:`command` to ``task.react``, which runs :func:`run`, turns
SIGINT/SIGTERM into an orderly interruption of the command (close
sessions, stop the simulator) and exits with the status.

``powerctl demo`` is dispatched, before any reactor is installed, to
``powerctl.cli.demo:main(argv)`` when that module exists: the demo owns
its own process (PostgreSQL, region, pserv).
"""

import argparse
import importlib.util
import sys
import traceback

from twisted.internet import defer, task

from powerctl.cli import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Context,
)
from powerctl.deferreds import when_fired

#: Longest the process waits, after a signal, for the command to clean up.
SHUTDOWN_GRACE = 10.0

DEMO_MODULE = "powerctl.cli.demo"


class _ParserExit(Exception):
    """argparse wanted to exit (``--help``, a usage error): with this status."""

    def __init__(self, status):
        super().__init__(status)
        self.status = status


def _parser_class(ctx):
    """
    An ArgumentParser class that writes to ``ctx``'s streams and raises
    instead of exiting, so parsing errors are testable in-process.
    """

    class Parser(argparse.ArgumentParser):
        def _print_message(self, message, file=None):
            if message:
                (ctx.stdout if file is sys.stdout else ctx.stderr).write(message)

        def exit(self, status=0, message=None):
            if message:
                ctx.stderr.write(message)
            raise _ParserExit(status)

    return Parser


def build_parser(ctx):
    """The whole ``powerctl`` argument tree."""
    from powerctl.cli import driver, rest, sim

    Parser = _parser_class(ctx)
    parser = Parser(
        prog="powerctl",
        description="Power control for bare-metal fleets.",
        epilog="Exit status: 0 ok, 1 failure, 2 usage/config error, 3 auth, "
               "4 unreachable, 5 timeout, 6 protocol, 7 unsupported, "
               "130 interrupted.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND",
                                     parser_class=Parser)
    commands.required = True
    driver.add_commands(commands)
    sim.add_commands(commands)
    rest.add_commands(commands)
    rest.add_global_options(parser)
    from powerctl.cli import admin  # issue 10: admin token, token, audit

    admin.add_commands(commands)
    commands.add_parser("demo", help="a self-contained demo fleet (PostgreSQL, "
                                     "region, pserv and simulators)", add_help=False)
    return parser


def run(argv, reactor, ctx=None):
    """
    Run ``powerctl argv`` on the running ``reactor``; a Deferred firing
    with the exit status.  ``ctx`` (a :class:`~powerctl.cli.Context`)
    supplies streams and environment; the process's own by default.
    """
    ctx = Context(reactor) if ctx is None else ctx
    return defer.ensureDeferred(_run(list(argv), ctx))


async def _run(argv, ctx):
    try:
        try:
            parser = build_parser(ctx)
            args = parser.parse_args(argv)
            from powerctl.cli.rest import apply_global_options

            problem = apply_global_options(args)
            if problem:
                parser.error(problem)
        except _ParserExit as e:
            return e.status
        if args.command == "demo":
            ctx.err("powerctl demo runs in its own process: use the "
                    "'powerctl demo' command itself")
            return EXIT_USAGE
        return await args.func(ctx, args)
    except CliError as e:
        ctx.err(f"error ({e.kind}): {e}")
        return e.status
    except Exception:
        ctx.err("error (bug): unexpected failure; please report this:")
        ctx.stderr.write(traceback.format_exc())
        return EXIT_FAILURE


def run_demo(argv, stderr=None):
    """Hand over to ``powerctl.cli.demo:main(argv)``, if it exists."""
    stderr = sys.stderr if stderr is None else stderr
    if importlib.util.find_spec(DEMO_MODULE) is None:
        stderr.write(
            "error (unsupported): powerctl demo is not available in this "
            f"installation ({DEMO_MODULE} is missing)\n")
        return EXIT_FAILURE
    demo = importlib.import_module(DEMO_MODULE)
    status = demo.main(argv)
    return EXIT_OK if status is None else status


def main(argv=None):
    """The ``powerctl`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        sys.exit(run_demo(argv[1:]))

    from powerctl.reactor import install

    task.react(command, (argv,), _reactor=install())


def command(reactor, argv, ctx=None):
    """
    The process around one command, as :func:`twisted.internet.task.react`
    runs it: the command starts once the reactor runs; the Deferred returned
    fails with ``SystemExit(status)``, which ``react`` makes the exit
    status once it has stopped the reactor.

    A signal (SIGINT/SIGTERM) stops the reactor; before it stops, the
    command still running is interrupted and given :data:`SHUTDOWN_GRACE`
    seconds to clean up (close sessions, stop a simulator).  Its own status
    is the process's; :data:`~powerctl.cli.EXIT_INTERRUPTED` if it did not
    finish in time.
    """
    ctx = Context(reactor) if ctx is None else ctx
    status = defer.Deferred()

    def finish(code):
        if not status.called:  # not once the grace after a signal has run out
            status.callback(code)

    def before_shutdown():
        if status.called:
            return None
        ctx.interrupt()
        waiting = when_fired(status)
        waiting.addTimeout(SHUTDOWN_GRACE, reactor,
                           onTimeoutCancel=lambda *_: finish(EXIT_INTERRUPTED))
        return waiting

    reactor.callWhenRunning(lambda: run(argv, reactor, ctx).addCallback(finish))
    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
    return status.addCallback(_exit)


def _exit(code):
    """How ``task.react`` is told the exit status (stdout flushed first, as the
    process ends right after)."""
    sys.stdout.flush()
    raise SystemExit(code)


if __name__ == "__main__":
    main()
