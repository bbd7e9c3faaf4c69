"""
A node's power topology: Pacemaker-style *levels* of devices.

Pure logic over driver Deferreds (no I/O of its own), so the rules are
tested with a ``Clock`` and fake drivers.  A node has one or more levels,
level 1 first; a level has one or more devices (agents), and **every**
device of a level must act.  Levels are tried in order until one succeeds;
a level that fails as a whole hands over to the next.  Per action, on the
devices of one level:

``off`` / ``soft-off`` / ``fence``
    every device off.  A device's ``off`` is verified by the driver itself
    (:class:`~powerctl.drivers.base.VerifyingDriver` queries first -- an
    "already off" device gets no command -- and again after the command
    until the state is reached), so a device counts only once a query showed
    it off.  One device failing, or answering anything but off, fails the
    level: the node may still be on through it.
``fence``
    as ``off``, but only on levels that can *prove* it: every device
    queryable (a ``webhook`` without ``query_url``, a ``manual`` agent
    cannot), unless the level is marked ``trusted_unverified``.  Levels
    that cannot prove it are skipped; with none left the fence is refused
    (:class:`FenceRefused`, naming the agents that cannot query) before any
    device is touched.
``on``
    every device on.  On reached through only some devices (one PSU of two)
    is a *degraded* success: the node is on, and the result carries a
    warning naming the devices that failed.  None on fails the level.
``cycle``
    one device: its own (verified) cycle.  Several: off on all, verified,
    then on on all -- never device by device, which would leave a dual-PSU
    node powered through the other supply all along.
``query``
    on if any device says on; off only if all say off; unknown if every
    device answered but one is between states; otherwise (a device failed
    and none said on) the level fails and the next one is asked.

Results are :class:`~powerctl.registry.Observed` naming the acting level
(1 first), the devices with the state each reported (or its error), a
warning when degraded, and the levels that failed before it.  When every
level failed the error is :class:`AgentsFailed` with each failed device.
"""

import attrs
from twisted.internet import defer

from powerctl.drivers.errors import PowerError, UnsupportedError
from powerctl.drivers.interface import Timing, perform
from powerctl.power import Action, PowerState
from powerctl.registry.actions import Observed


class AgentsFailed(PowerError):
    """
    Every level failed.  ``failures`` maps agent labels to their errors
    (devices of every level tried); ``kind`` is theirs when they agree (e.g.
    all ``unreachable``).  ``levels`` lists the :class:`LevelFailed` of each
    level tried, in order.
    """

    def __init__(self, failures, levels=()):
        self.failures = dict(failures)
        self.levels = list(levels)
        kinds = {getattr(e, "kind", "error") for e in self.failures.values()}
        self.kind = kinds.pop() if len(kinds) == 1 else "multiple"
        # (Every failure here is a PowerError, which defines transient: make
        # mutate's getattr fallback True is equivalent; so in LevelFailed.)
        self.transient = bool(self.failures) and all(
            getattr(e, "transient", False) for e in self.failures.values())
        if self.levels and len(self.levels) > 1:
            text = "; ".join(str(level) for level in self.levels)
        else:
            text = "; ".join(f"{label}: {e}" for label, e in self.failures.items())
        super().__init__(text or "no level could act")

    def detail(self):
        """What the journal keeps of it: each level tried and its devices."""
        return {"failed_levels": [level.as_json() for level in self.levels]}


class FenceRefused(UnsupportedError):
    """
    No level of the node can prove it off: each has an agent that cannot
    query (and none is marked ``trusted_unverified``).  Nothing was sent.
    """

    def __init__(self, agents):
        self.agents = list(agents)
        super().__init__(
            "fence refused: no level can verify the node off; agents that cannot query: "
            + ", ".join(self.agents)
            + " (mark a level trusted_unverified to fence without a verifying query)")


@attrs.frozen
class Agent:
    """One driver bound to one device, with a label safe to show and log."""

    label: str
    driver: object  # IPowerDriver

    @property
    def queryable(self):
        """Whether its device can be queried (drivers without capabilities can)."""
        capabilities = getattr(self.driver, "capabilities", None)
        return capabilities is None or bool(capabilities.queryable)


@attrs.frozen
class DeviceResult:
    """What one device of a level answered: a state, or an error."""

    label: str
    state: PowerState | None = None
    error: BaseException | None = attrs.field(default=None, eq=False)

    def as_json(self):
        out = {"agent": self.label,
               "state": self.state.value if self.state is not None else PowerState.UNKNOWN.value}
        if self.error is not None:
            out["error"] = str(self.error)[:500]
            out["error_kind"] = getattr(self.error, "kind", "error")
        return out


class LevelFailed(PowerError):
    """One level could not do the action; the next one is tried."""

    def __init__(self, number, reason, results=()):
        self.number = number
        self.reason = reason
        self.results = list(results)
        errors = [r.error for r in self.results if r.error is not None]
        kinds = {getattr(e, "kind", "error") for e in errors}
        self.kind = kinds.pop() if len(kinds) == 1 else ("multiple" if kinds else "protocol")
        # (errors are PowerErrors (_act re-raises others): the fallback
        # False -> True of make mutate is equivalent.)
        self.transient = bool(errors) and all(getattr(e, "transient", False) for e in errors)
        super().__init__(f"level {number}: {reason}")

    def as_json(self):
        return {"level": self.number, "reason": self.reason,
                "devices": [r.as_json() for r in self.results]}


@attrs.frozen
class Level:
    """One level: devices that must all act."""

    agents: tuple = attrs.field(converter=tuple)
    trusted_unverified: bool = False

    def __attrs_post_init__(self):
        if not self.agents:
            raise ValueError("a level needs at least one agent")

    @property
    def verifiable(self):
        """Every device can be queried, so an off can be proved."""
        return all(a.queryable for a in self.agents)

    @property
    def can_fence(self):
        return self.verifiable or self.trusted_unverified


async def _act(agents, action):
    """Run ``action`` on every device at once: [DeviceResult]."""
    results = await defer.DeferredList(
        [perform(a.driver, action) for a in agents], consumeErrors=True)
    out = []
    for agent, (ok, value) in zip(agents, results):
        if ok:
            out.append(DeviceResult(agent.label, PowerState(value)))
            continue
        error = value.value
        if not isinstance(error, PowerError):
            value.raiseException()  # a bug or a cancellation, not a device failure
        out.append(DeviceResult(agent.label, None, error))
    return out


def _labels(results, state=None):
    return ",".join(r.label for r in results if state is None or r.state == state)


def _all_are(results, state):
    return all(r.error is None and r.state == state for r in results)


def _describe(results):
    """Why a level failed, device by device (errors and unexpected states)."""
    return "; ".join(
        f"{r.label}: {r.error}" if r.error is not None else f"{r.label}: {r.state.value}"
        for r in results)


@attrs.frozen
class NodeTopology:
    """The power of one node: its levels, tried in order."""

    levels: tuple = attrs.field(converter=tuple)

    def __attrs_post_init__(self):
        if not self.levels:
            raise ValueError("a node needs at least one power level")

    @property
    def agents(self):
        """Every agent, level by level."""
        return tuple(a for level in self.levels for a in level.agents)

    def fence_refusal(self):
        """A :class:`FenceRefused` when no level can fence, else None."""
        if any(level.can_fence for level in self.levels):
            return None
        return FenceRefused([a.label for a in self.agents if not a.queryable])

    def run(self, action):
        """Deferred[Observed]: do ``action``; cancelling cancels every device."""
        return defer.ensureDeferred(self._run(Action.parse(action)))

    def quiesced(self):
        """Fires once no agent still has a call running against its device."""
        return defer.DeferredList(
            [defer.maybeDeferred(a.driver.quiesced) for a in self.agents],
            consumeErrors=True,
        ).addCallback(lambda _: None)

    async def _run(self, action):
        if action is Action.FENCE:
            refusal = self.fence_refusal()
            if refusal is not None:
                raise refusal
        failed = []
        for number, level in enumerate(self.levels, 1):
            if action is Action.FENCE and not level.can_fence:
                failed.append(LevelFailed(number, "cannot verify off (agents that cannot "
                                          "query: " + ", ".join(
                                              a.label for a in level.agents
                                              if not a.queryable) + ")"))
                continue
            try:
                observed = await self._level(number, level, action)
            except LevelFailed as e:
                failed.append(e)
                continue
            if failed:
                observed = attrs.evolve(
                    observed, failed_levels=tuple(f.as_json() for f in failed))
            return observed
        failures = {r.label: r.error for f in failed for r in f.results if r.error is not None}
        if not failures:  # states but no errors (a device answered on to an off)
            failures = {f"level {f.number}": f for f in failed}
        raise AgentsFailed(failures, failed)

    async def _level(self, number, level, action):
        agents = level.agents

        def observed(state, results, acting=None, warning=None, verified=True):
            return Observed(state, acting if acting is not None else _labels(results),
                            level=number, devices=tuple(results), warning=warning,
                            verified=verified)

        if action is Action.QUERY:
            results = await _act(agents, Action.QUERY)
            if any(r.state == PowerState.ON for r in results):
                return observed(PowerState.ON, results, _labels(results, PowerState.ON))
            if _all_are(results, PowerState.OFF):
                return observed(PowerState.OFF, results)
            if all(r.error is None for r in results):
                # every device answered, one is between states (a Redfish
                # system PoweringOn): the node is in transition, an answer
                return observed(PowerState.UNKNOWN, results)
            raise LevelFailed(number, "cannot tell: " + _describe(results), results)
        if action in (Action.OFF, Action.SOFT_OFF, Action.FENCE):
            results = await _act(agents, Action.OFF if action is Action.FENCE else action)
            if _all_are(results, PowerState.OFF):
                return observed(PowerState.OFF, results, verified=level.verifiable)
            raise LevelFailed(number, "not every device is off: " + _describe(results), results)
        if action is Action.CYCLE and len(agents) > 1:
            results = await _act(agents, Action.OFF)
            if not _all_are(results, PowerState.OFF):
                raise LevelFailed(number, "cycle stopped, not every device went off: "
                                  + _describe(results), results)
            return await self._on(number, level, observed)
        if action is Action.CYCLE:
            results = await _act(agents, Action.CYCLE)
            if _all_are(results, PowerState.ON):
                return observed(PowerState.ON, results)
            raise LevelFailed(number, _describe(results), results)
        return await self._on(number, level, observed)

    async def _on(self, number, level, observed):
        results = await _act(level.agents, Action.ON)
        on = [r for r in results if r.error is None and r.state == PowerState.ON]
        if len(on) == len(results):
            return observed(PowerState.ON, results)
        if on:
            rest = [r for r in results if r not in on]
            return observed(PowerState.ON, results, _labels(on),
                            warning=f"degraded: on through {_labels(on)} only; "
                                    + _describe(rest))
        raise LevelFailed(number, "no device came on: " + _describe(results), results)


# -- derived timeouts ---------------------------------------------------------

def call_bound(timing):
    """The longest one protocol call with its retries and back-offs can take."""
    total, delay = timing.timeout, timing.backoff
    for _ in range(timing.retries):
        total += delay + timing.timeout
        delay = min(delay * 2, timing.backoff_max)
    return total


def device_bound(timing, action):
    """
    The longest one verified action of a :class:`VerifyingDriver` can take
    (query, command, polling until ``verify_timeout`` plus one more poll);
    None when unbounded (a manual agent without timeout).
    """
    if timing is None:
        return None
    action = Action.parse(action)
    call = call_bound(timing)
    change = 3 * call + timing.verify_timeout + timing.poll_interval
    if action is Action.QUERY:
        return call
    if action is Action.SOFT_OFF:
        return 2 * call + timing.soft_off_timeout + timing.poll_interval + call + change
    if action is Action.CYCLE:
        return 2 * change
    return change  # on, off, fence


def timing_of(driver_name, driver_type, params):
    """
    The :class:`Timing` an agent runs under: its driver type's, with the
    agent's own ``timeout`` parameter for one call where the driver takes
    one.  A manual agent waits for its ``timeout`` (or the default) in one
    go: a Timing whose whole change is that wait; None if it waits for ever.
    """
    if driver_name == "manual":
        wait = params.get("timeout") or getattr(driver_type, "default_timeout", None)
        if not wait:
            return None
        return Timing(timeout=0.0, retries=0, verify_timeout=float(wait), poll_interval=0.0)
    timing = getattr(driver_type, "timing", None) or Timing()
    if driver_name != "snmp" and params.get("timeout"):
        timing = attrs.evolve(timing, timeout=float(params["timeout"]))
    return timing


def _add(a, b):
    return None if a is None or b is None else a + b


def _max(values):
    values = list(values)
    return None if any(v is None for v in values) else max(values)


def derived_bounds(levels, action):
    """
    Per device, per level and total bounds of ``action`` in seconds.
    ``levels`` is ``[[(label, Timing or None), ...], ...]``.  Devices of a
    level act at once (the level takes its slowest device; a cycle over
    several devices is off-all then on-all); levels are tried one after
    the other (the total is their sum, the worst case being every level
    failing at its bound).  None means unbounded.
    """
    action = Action.parse(action)
    out = {"action": action.value, "levels": [], "total": 0.0}
    for number, devices in enumerate(levels, 1):
        bounds = {label: device_bound(t, action) for label, t in devices}
        if action is Action.CYCLE and len(devices) > 1:
            level = _add(_max(device_bound(t, Action.OFF) for _, t in devices),
                         _max(device_bound(t, Action.ON) for _, t in devices))
        else:
            level = _max(bounds.values())
        out["levels"].append({"level": number, "bound": level,
                              "devices": [{"agent": k, "bound": v} for k, v in bounds.items()]})
        out["total"] = _add(out["total"], level)
    return out
