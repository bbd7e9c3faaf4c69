"""
A node's power configuration from the command line.

``--driver NAME -p k=v``, ``--agent 'driver=...,k=v'`` (repeatable) or
``--power-json FILE`` become the power document the API stores
(``{"mode", "agents": [{"driver", "pod_manager"?, "params"}]}``).  Values the
driver's schema knows are converted here (ports to numbers, ...) so the
stored configuration is typed; everything else is left for the API to judge,
since only the region knows the pod managers an agent may lean on.
"""

from powerctl.cli import UsageError
from powerctl.cli.driver import add_param_options, gather_params, parse_pairs, read_json_source

#: Agent keys that are not driver parameters (``label`` is one: the manual
#: driver's).
AGENT_KEYS = ("driver", "pod_manager")

MODES = ("single", "concurrent", "sequential")


def schemas():
    """``{driver: Schema}`` of the standard drivers, without building any."""
    from powerctl.drivers.standard import standard_schemas

    return standard_schemas()


def add_power_options(parser):
    """The options that give a power configuration (``node add``/``update``)."""
    add_param_options(parser)
    parser.add_argument("--driver", "-d", metavar="NAME", help="driver of a single agent")
    parser.add_argument("--agent", action="append", default=[], metavar="SPEC",
                        help="an agent as 'driver=ipmi,host=...,password=...' "
                             "(repeat for several; pod_manager=UUID is an agent "
                             "field, the rest driver parameters)")
    parser.add_argument("--power-json", metavar="FILE",
                        help="the whole power configuration as JSON ('-' reads stdin)")
    parser.add_argument("--mode", choices=MODES,
                        help="how several agents are driven (default single)")
    parser.add_argument("--level", action="append", default=[], metavar="SPECS",
                        help="a power level: agents as for --agent, separated by ';' "
                             "(every one must act); repeat for level 2, 3...  "
                             "(tried in order until one succeeds)")
    parser.add_argument("--trusted-unverified", action="append", type=int, default=[],
                        metavar="N", help="with --level: level N (from 1) may fence "
                                          "without a verifying query")


def split_top_level(text, sep=","):
    """Split on ``sep`` outside quotes and JSON brackets (for ``--agent``)."""
    parts, depth, quote, current = [], 0, None, []
    for ch in text:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def convert_params(driver, params, schemas):
    """
    Convert values the driver's schema knows (ports to numbers, ...), so
    the configuration stored is typed; unknown names are left for the API
    to refuse.  Nothing else is checked here: an agent using a pod manager
    legitimately omits its address and credentials.
    """
    schema = schemas.get(driver)
    if schema is None:
        return params
    declared = {p.name: p for p in schema.params}
    converted = {}
    for key, value in params.items():
        param = declared.get(key)
        if param is not None and value not in (None, ""):
            try:
                value = param.convert(value)
            except ValueError as e:
                raise UsageError(f"{driver} parameter {key!r}: {e}") from None
        converted[key] = value
    return converted


def parse_agent(text, schemas):
    """``driver=ipmi,host=h,password=p`` to ``{"driver", "params", ...}``."""
    pairs = split_top_level(text)
    fields = {}
    for pair in pairs:
        key = pair.partition("=")[0].strip()
        if key in AGENT_KEYS:
            fields[key] = pair.partition("=")[2].strip()
    driver = fields.get("driver")
    if not driver:
        raise UsageError("--agent needs driver=NAME")
    rest = [p for p in pairs if p.partition("=")[0].strip() not in AGENT_KEYS]
    params = parse_pairs(rest, schemas.get(driver))
    agent = {"driver": driver}
    agent.update({k: v for k, v in fields.items() if k != "driver" and v})
    agent["params"] = convert_params(driver, params, schemas)
    return agent


def _from_json(ctx, args):
    doc = read_json_source(ctx, args.power_json, "--power-json")
    if isinstance(doc, list):
        doc = {"agents": doc}
    if isinstance(doc, dict) and "levels" in doc:
        if args.mode:
            raise UsageError("--mode does not go with levels: each level lists its agents")
        return doc  # a topology: the region checks it and names the level/agent at fault
    if not isinstance(doc, dict) or not isinstance(doc.get("agents"), list) \
            or not doc["agents"]:
        raise UsageError("--power-json needs {\"levels\": [{\"agents\": [...]}, ...]}, "
                         "{\"mode\": ..., \"agents\": [...]} or a list of agents")
    if args.mode:
        doc["mode"] = args.mode
    doc.setdefault("mode", "single" if len(doc["agents"]) == 1 else None)
    if doc["mode"] is None:
        raise UsageError("several agents need --mode concurrent or sequential")
    return doc


def power_from_args(ctx, args, required):
    """
    The power configuration from ``--driver/-p``, ``--agent`` or
    ``--power-json``; None when none is given and ``required`` is false.
    """
    known = schemas()
    levels = getattr(args, "level", None) or []
    trusted = getattr(args, "trusted_unverified", None) or []
    sources = sum(bool(x) for x in (args.driver, args.agent, args.power_json, levels))
    if sources > 1:
        raise UsageError("give one of --driver/-p, --agent, --level or --power-json")
    if trusted and not levels:
        raise UsageError("--trusted-unverified goes with --level")
    if levels:
        if args.mode:
            raise UsageError("--mode does not go with --level: each level lists its agents")
        if args.params or args.params_json:
            raise UsageError("-p/--params-json go with --driver, not --level")
        bad = [n for n in trusted if not 1 <= n <= len(levels)]
        if bad:
            raise UsageError(f"--trusted-unverified {bad[0]}: there are {len(levels)} level(s)")
        out = []
        for number, text in enumerate(levels, 1):
            specs = [t for t in split_top_level(text, ";") if t.strip()]
            if not specs:
                raise UsageError(f"--level {number}: no agent")
            level = {"agents": [parse_agent(spec.strip(), known) for spec in specs]}
            if number in trusted:
                level["trusted_unverified"] = True
            out.append(level)
        return {"levels": out}
    if not sources:
        if args.params or args.params_json:
            raise UsageError("-p/--params-json need --driver")
        if args.mode:
            raise UsageError("--mode needs the agents (--agent or --driver/-p)")
        if required:
            raise UsageError("a node needs power: --driver NAME -p k=v, "
                             "--agent 'driver=...,k=v' or --power-json FILE")
        return None
    if args.power_json:
        return _from_json(ctx, args)
    if args.driver:
        params = gather_params(ctx, args, known.get(args.driver))
        agents = [{"driver": args.driver,
                   "params": convert_params(args.driver, params, known)}]
    else:
        if args.params or args.params_json:
            raise UsageError("-p/--params-json go with --driver, not --agent")
        agents = [parse_agent(text, known) for text in args.agent]
    mode = args.mode or ("single" if len(agents) == 1 else None)
    if mode is None:
        raise UsageError("several agents need --mode concurrent or sequential")
    if mode == "single" and len(agents) != 1:
        raise UsageError("--mode single takes exactly one agent")
    return {"mode": mode, "agents": agents}


def power_summary(power):
    """``ipmi``, ``concurrent: ipmi+snmp`` or ``levels: ipmi | snmp+snmp`` for a table cell."""
    if not isinstance(power, dict):
        return None
    if "levels" in power:
        levels = power["levels"] if isinstance(power["levels"], list) else []
        return "levels: " + " | ".join(
            "+".join(str(a.get("driver", "?")) for a in (lv.get("agents") or ())
                     if isinstance(a, dict))
            for lv in levels if isinstance(lv, dict))
    drivers = "+".join(
        str(a.get("driver", "?")) for a in power.get("agents") or () if isinstance(a, dict))
    mode = power.get("mode") or "single"
    return drivers if mode == "single" else f"{mode}: {drivers}"
