"""
Automatic fencing of non-responsive hosts: the decision, without I/O.

oVirt's rule, per cluster: a node that has stayed non-responsive past its
grace is fenced, so that what ran on it can be restarted elsewhere.  Two
brakes keep the rule from doing harm when the *network* fails rather than
the hosts:

* **Storm protection.**  When more than ``storm_share`` of a cluster's nodes
  became non-responsive within ``window`` seconds, the likeliest cause is
  the network between the pservs and the hosts (or the pservs themselves),
  and fencing would power off healthy machines.  Nothing is fenced in that
  cluster until the share drops again; the decision says so, so the region
  can report the storm.
* **Rate limit.**  At most ``max_per_window`` automatic fences start in any
  ``window`` seconds, counting the ones already started.

A node with an open fence (automatic or manual) is never fenced again: the
region journals at most one fence per node at a time, and a manual request
supersedes an automatic one as any newer request does.  Nor is a node
already fenced (its last fence succeeded, nothing switched it on since),
though it may stay non-responsive: its BMC may have gone dark with it.

The module is pure: :func:`decide` takes what the region read from the
journal and the clock's time, and returns a :class:`Decision`.
"""

import attrs


#: Upper bounds, as the API documents them.
MAX_SECONDS = 1e9
MAX_PER_WINDOW = 1_000_000
MAX_URL = 2048


def _number(value):
    """A JSON number as a float (booleans and strings are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number, not {value!r}")
    return float(value)


def _within(high):
    def check(instance, attribute, value):
        if not 0 < value <= high:  # NaN fails too
            raise ValueError(f"{attribute.name} must be in (0, {high:g}], got {value!r}")
    return check


def _count(value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer, not {value!r}")
    return value


def _boolean(instance, attribute, value):
    if not isinstance(value, bool):
        raise ValueError(f"{attribute.name} must be true or false, not {value!r}")


def _url(instance, attribute, value):
    if value is not None and not (isinstance(value, str) and len(value) <= MAX_URL
                                  and value.startswith(("http://", "https://"))):
        raise ValueError(f"{attribute.name} must be an http(s) URL of at most {MAX_URL}"
                         " characters, or null")


@attrs.frozen
class AutoFencePolicy:
    """
    One cluster's automatic fencing settings.

    :param grace: seconds a node must have been non-responsive before it
        is fenced.
    :param window: the window, in seconds, of storm detection and of the
        rate limit.
    :param storm_share: the share of the cluster's nodes that, having become
        non-responsive within ``window``, means a storm (default half).
    :param max_per_window: automatic fences allowed to start per window.
    :param soft_url: optional webhook tried first (e.g. restart the host's
        agent), given ``soft_timeout`` seconds.
    """

    enabled: bool = attrs.field(default=False, validator=_boolean)
    grace: float = attrs.field(default=300.0, converter=_number,
                               validator=_within(MAX_SECONDS))
    window: float = attrs.field(default=600.0, converter=_number,
                                validator=_within(MAX_SECONDS))
    storm_share: float = attrs.field(default=0.5, converter=_number, validator=_within(1.0))
    max_per_window: int = attrs.field(default=5, converter=_count,
                                      validator=_within(MAX_PER_WINDOW))
    soft_url: str | None = attrs.field(default=None, validator=_url)
    soft_timeout: float = attrs.field(default=30.0, converter=_number,
                                      validator=_within(MAX_SECONDS))

    @classmethod
    def from_dict(cls, data):
        """A policy from its JSON form; ValueError naming the bad key."""
        if not isinstance(data, dict):
            raise ValueError("auto_fence must be an object")
        known = {a.name for a in attrs.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"auto_fence: unknown setting(s) {', '.join(unknown)}; "
                             f"allowed: {', '.join(sorted(known))}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"auto_fence: {e}") from None

    def to_dict(self):
        return attrs.asdict(self)


#: The settings of a policy, as its JSON form names them.
FIELDS = tuple(a.name for a in attrs.fields(AutoFencePolicy))


@attrs.frozen
class NodeHealth:
    """
    What the decision needs of one node.

    :param nonresponsive_since: when it became non-responsive (clock
        seconds), or None while it is responsive.
    :param fence_open: whether a fence of it is pending or running.
    :param fenced: whether it is fenced already: its last fence succeeded
        and nothing switched it on since (no ``on``/``cycle`` requested, not
        seen on).  Fenced through its PDU, a node's BMC loses power too and
        the node stays non-responsive; fencing it again every ``grace``
        would only fill the journal and spend the rate limit that other
        nodes may need.
    """

    name: str
    nonresponsive_since: float | None = None
    fence_open: bool = False
    fenced: bool = False


@attrs.frozen
class Decision:
    """
    What to do in one cluster now.

    ``fence``: the nodes to fence, oldest failure first.  ``storm``: True
    when storm protection holds everything back (then ``fence`` is empty).
    ``throttled``: nodes due but held back by the rate limit.  ``recent``:
    how many nodes became non-responsive within the window, of ``total``.
    """

    fence: tuple = ()
    storm: bool = False
    throttled: tuple = ()
    recent: int = 0
    total: int = 0


def decide(policy, now, nodes, started):
    """
    The :class:`Decision` for one cluster.

    :param policy: its :class:`AutoFencePolicy`.
    :param now: the clock's time, in the same seconds as the timestamps.
    :param nodes: a :class:`NodeHealth` per node of the cluster.
    :param started: the times automatic fences of this cluster started.
    """
    nodes = list(nodes)
    if not policy.enabled or not nodes:
        return Decision(total=len(nodes))
    down = [n for n in nodes if n.nonresponsive_since is not None]
    recent = sum(1 for n in down if now - n.nonresponsive_since <= policy.window)
    if recent > policy.storm_share * len(nodes):
        return Decision(storm=True, recent=recent, total=len(nodes))
    due = sorted((n for n in down
                  if not (n.fence_open or n.fenced)
                  and now - n.nonresponsive_since >= policy.grace),
                 key=lambda n: (n.nonresponsive_since, n.name))
    spent = sum(1 for t in started if now - t < policy.window)
    room = max(0, policy.max_per_window - spent)
    return Decision(fence=tuple(n.name for n in due[:room]),
                    throttled=tuple(n.name for n in due[room:]),
                    recent=recent, total=len(nodes))
