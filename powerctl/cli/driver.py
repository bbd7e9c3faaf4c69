"""
``powerctl driver``: one driver operation with no region, like a fence agent.

``powerctl driver on|off|soft-off|cycle|query --driver NAME -p key=value``
validates the parameters against the driver's schema before anything is
sent, runs one verified operation bounded by ``--timeout``, prints the
state reached (``on``/``off``) and exits with the status of
:mod:`powerctl.cli` (2 config, 3 auth, 4 unreachable, 5 timeout,
6 protocol, 7 unsupported, 1 other).  The driver types are closed before
the command returns, and closing is itself bounded, so a hung device can
never keep the process alive past ``--timeout`` plus a short grace.

``powerctl driver list`` shows every driver and its parameters.
"""

import json
import threading
import time

import attrs
from twisted.internet import defer

from powerctl.cli import EXIT_OK, CliError, Interrupted, UsageError
from powerctl.cli import output
from powerctl.drivers.errors import PowerError, PowerTimeout
from powerctl.drivers.interface import Timing, perform
from powerctl.power import Action

#: Longest we wait for the driver types to release sessions after the
#: operation; IPMI threads are daemons, so giving up here cannot hang exit.
CLOSE_GRACE = 2.0

#: Per-call bound when --timeout is larger (one protocol exchange).
CALL_TIMEOUT = 10.0

#: How often the state is read while waiting for it: one operator waits on
#: one device, so react fast (the IPMI driver keeps its own minimum
#: interval between commands to a BMC anyway).
POLL_INTERVAL = 0.5



def add_commands(subparsers):
    """Register ``driver ...`` under the top-level ``subparsers``."""
    driver = subparsers.add_parser(
        "driver", help="run one driver operation without a region (fence-agent style)",
        description=__doc__.split("\n\n")[1])
    commands = driver.add_subparsers(dest="driver_command", metavar="COMMAND")
    commands.required = True
    for action in Action:
        p = commands.add_parser(
            action.value, help=f"{action.value} one agent and print the state reached")
        p.set_defaults(func=run_action, action=action)
        p.add_argument("--driver", "-d", required=True, metavar="NAME",
                       help="driver type (see 'powerctl driver list')")
        add_param_options(p)
        p.add_argument("--timeout", type=positive_float, default=60.0, metavar="S",
                       help="bound on the whole operation, seconds (default 60)")
        p.add_argument("--json", action="store_true",
                       help="print a JSON object instead of the bare state")
    lister = commands.add_parser("list", help="drivers and their parameters")
    lister.add_argument("name", nargs="?", help="only this driver")
    lister.add_argument("--json", action="store_true")
    lister.set_defaults(func=run_list)


def add_param_options(parser):
    """``-p key=value`` and ``--params-json``, shared with ``node add``."""
    parser.add_argument(
        "-p", "--param", dest="params", action="append", default=[], metavar="KEY=VALUE",
        help="a driver parameter; mapping parameters take JSON, e.g. "
             "-p 'headers={\"X-Token\":\"t\"}'")
    parser.add_argument(
        "--params-json", metavar="FILE", default=None,
        help="a JSON object of parameters ('-' reads stdin), so that secrets "
             "need not appear on the command line; -p values override it")


def positive_float(text):
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def read_json_source(ctx, source, what):
    """Parse JSON from a file name or ``-`` (stdin); UsageError if bad."""
    try:
        if source == "-":
            text = ctx.stdin.read()
        else:
            with open(source, encoding="utf-8") as f:
                text = f.read()
    except OSError as e:
        raise UsageError(f"{what}: cannot read {source}: {e.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise UsageError(f"{what}: {source} is not valid JSON: {e}") from None


def parse_pairs(pairs, schema=None):
    """
    ``["k=v", ...]`` to a dict.  Values stay strings (the schema converts
    them) except for parameters ``schema`` declares as mappings, which are
    JSON.  Errors never echo a value: it may be a password.
    """
    types = {p.name: p.type for p in schema.params} if schema is not None else {}
    params = {}
    for index, pair in enumerate(pairs, 1):
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"parameter #{index} is not of the form key=value")
        if key in params:
            raise UsageError(f"parameter {key!r} given twice")
        if types.get(key) == "mapping":
            try:
                value = json.loads(value)
            except ValueError as e:
                raise UsageError(f"parameter {key!r}: not valid JSON ({e.msg})") from None
        params[key] = value
    return params


def gather_params(ctx, args, schema=None):
    """``--params-json`` overlaid with ``-p``: the raw parameters."""
    params = {}
    if args.params_json is not None:
        params = read_json_source(ctx, args.params_json, "--params-json")
        if not isinstance(params, dict):
            raise UsageError("--params-json must hold a JSON object")
    params.update(parse_pairs(args.params, schema))
    return params


def timing_for(timeout):
    """
    Driver timing that fits in ``timeout`` seconds overall: one call gets
    at most 10 s and never the whole budget (so the driver's own per-call
    timeout never fires at the same instant as ours, when it could absorb
    our cancellation into a retry), waiting for the state gets the whole
    budget, and a graceful shutdown half of it before the hard off.
    """
    return Timing(
        timeout=min(CALL_TIMEOUT, timeout * 0.8),
        verify_timeout=timeout,
        soft_off_timeout=timeout / 2,
        poll_interval=min(POLL_INTERVAL, timeout / 10),
    )


async def bounded(ctx, d, timeout, what="operation"):
    """
    Await ``d`` for at most ``timeout`` seconds: on expiry (PowerTimeout)
    or on Ctrl-C/SIGTERM (:class:`Interrupted`) ``d`` is cancelled and we
    return at once, *without* waiting for ``d`` to acknowledge the
    cancellation -- a driver that is slow to unwind (or that absorbs a
    cancellation into its own retry loop) must not hold the process past
    its budget.  ``d``'s late outcome is discarded.
    """
    result = defer.Deferred()

    def settle(outcome):
        if not result.called:
            result.callback(outcome)  # a Failure passes on as a failure

    def give_up(error):
        if not result.called:
            result.errback(error)
        d.cancel()

    d.addBoth(settle)
    d.addErrback(lambda _: None)  # nobody else will look at a late failure
    timer = ctx.reactor.callLater(
        timeout, give_up, PowerTimeout(f"{what}: no result within {timeout:g}s"))
    remove = ctx.on_interrupt(lambda: give_up(Interrupted(
        f"{what}: interrupted before it finished; the device may or may not "
        "have changed")))
    try:
        return await result
    finally:
        remove()
        if timer.active():
            timer.cancel()


@attrs.define
class _Operator:
    """
    The person at the terminal, for the ``manual`` driver: the operation
    waits for a confirmation, which we ask for on stderr and read from
    stdin (a daemon thread, so an unanswered prompt never blocks exit).
    """

    ctx: object
    confirmations: object
    label: str
    action: Action

    def ask(self):
        answer = defer.Deferred()

        def read():
            line = self.ctx.stdin.readline()
            self.ctx.reactor.callFromThread(
                lambda: answer.called or answer.callback(line))

        self.ctx.err(
            f"manual {self.label}: please {self.action.value} it by hand, then "
            "type 'yes' and Enter ('no' gives up)")
        threading.Thread(target=read, name="powerctl-operator", daemon=True).start()
        answer.addCallback(self._answered)
        return answer

    def _answered(self, line):
        if not line:
            raise PowerError(f"manual {self.label}: no confirmation (stdin closed)")
        word = line.strip().lower()
        if word in ("", "y", "yes", "done", "ok"):
            self.confirmations.confirm(self.label, self.action.target)
        else:
            raise PowerError(f"manual {self.label}: the operator declined")


async def _perform(ctx, catalogue, driver_type, driver, action):
    op = perform(driver, action)
    if driver_type.name != "manual" or not action.changes_power:
        return await op
    # Fail the operation if the operator says no; confirm it if yes.
    prompt = _Operator(ctx, driver_type.confirmations, driver.label, action).ask()
    prompt.addErrback(lambda f: op.called or op.errback(f))
    try:
        return await op
    finally:
        prompt.cancel()


async def run_action(ctx, args):
    """``powerctl driver <action>``."""
    from powerctl.drivers.standard import standard_catalogue

    action = args.action
    schema = None
    catalogue = standard_catalogue(ctx.reactor, timing=timing_for(args.timeout))
    secrets = []
    started = time.monotonic()
    try:
        try:
            driver_type = catalogue.get(args.driver)
            schema = driver_type.schema
            params = gather_params(ctx, args, schema)
            secrets = [v for k, v in params.items() if k in schema.secrets]
            driver = catalogue.build(args.driver, params)
            op = defer.ensureDeferred(_perform(ctx, catalogue, driver_type, driver, action))
            state = await bounded(ctx, op, args.timeout,
                                  f"{args.driver} {action.value}")
        except (PowerError, CliError) as e:
            kind = "config" if isinstance(e, UsageError) else e.kind
            message = output.scrub(str(e), secrets)
            if args.json:
                ctx.out(output.to_json({
                    "driver": args.driver, "action": action.value, "state": None,
                    "error": {"kind": kind, "message": message},
                    "elapsed": round(time.monotonic() - started, 3),
                }))
            return ctx.fail(kind, message)
    finally:
        await _close(ctx, catalogue)
    value = getattr(state, "value", str(state))
    if args.json:
        ctx.out(output.to_json({
            "driver": args.driver, "action": action.value, "state": value,
            "error": None, "elapsed": round(time.monotonic() - started, 3),
        }))
    else:
        ctx.out(value)
    return EXIT_OK


async def _close(ctx, catalogue):
    """Release sessions and engines, but never wait more than CLOSE_GRACE."""
    d = catalogue.close()
    d.addTimeout(CLOSE_GRACE, ctx.reactor)
    try:
        await d
    except Exception:  # a slow or failing close must not change the outcome
        pass


def describe_params(schema):
    return [
        {
            "name": p.name, "type": p.type, "required": p.required,
            "default": p.default, "choices": list(p.choices), "secret": p.secret,
            "minimum": p.minimum, "help": p.help,
        }
        for p in schema.params
    ]


async def run_list(ctx, args):
    """``powerctl driver list [NAME]``."""
    from powerctl.drivers.errors import UnknownDriver
    from powerctl.drivers.standard import driver_type_classes

    classes = sorted(driver_type_classes(), key=lambda c: c.name)
    if args.name is not None:
        classes = [c for c in classes if c.name == args.name]
        if not classes:
            raise UsageError(str(UnknownDriver(args.name, [c.name for c in driver_type_classes()])))
    drivers = [
        {
            "name": c.name,
            "capabilities": attrs.asdict(c.capabilities),
            "params": describe_params(c.schema),
        }
        for c in classes
    ]
    if args.json:
        ctx.out(output.to_json(drivers))
        return EXIT_OK
    rows = [
        dict(p, driver=d["name"]) for d in drivers for p in d["params"]
    ]
    ctx.out(output.table(rows, [
        ("DRIVER", "driver"),
        ("PARAMETER", "name"),
        ("TYPE", "type"),
        ("REQUIRED", "required"),
        ("DEFAULT", "default"),
        ("SECRET", "secret"),
        ("DESCRIPTION", _description),
    ]))
    return EXIT_OK


def _description(param):
    text = param["help"]
    extra = []
    if param["choices"]:
        extra.append("one of " + "|".join(map(str, param["choices"])))
    if param["minimum"] is not None:
        extra.append(f">= {param['minimum']:g}")
    return "; ".join([text] * bool(text) + extra)
