"""
Which power action outranks which: a replaceable policy object.

Keeping the ranking in one object (instead of ``if action == ...`` in the
registry) lets an operator choose, say, ``cycle`` over ``soft-off``, and
lets the tests swap it.
"""

import types

import attrs
from zope.interface import Interface, implementer

from powerctl.power import Action


class IRankPolicy(Interface):
    def outranks(new, current):
        """True when a new changing ``Action`` should supersede ``current``."""


#: (Ranks are only compared with each other: make mutate's +-1 on any of
#: them is equivalent, the order stays strict.)
DEFAULT_RANKS = types.MappingProxyType({
    Action.FENCE: 50,
    Action.OFF: 40,
    Action.SOFT_OFF: 30,
    Action.CYCLE: 20,
    Action.ON: 10,
})


def _check_ranks(instance, attribute, value):
    missing = {a for a in Action if a.changes_power} - set(value)
    if missing:
        raise ValueError("rank policy lacks " + ", ".join(sorted(a.value for a in missing)))


@implementer(IRankPolicy)
@attrs.frozen
class RankPolicy:
    """
    Strict ranking by number: a new action supersedes the one in play only
    when its rank is *higher*; equal ranks wait.  Default:
    ``fence`` > ``off`` > ``soft-off`` > ``cycle`` > ``on``.
    """

    ranks: types.MappingProxyType = attrs.field(
        default=DEFAULT_RANKS,
        converter=lambda m: types.MappingProxyType(dict(m)),
        validator=_check_ranks,
    )

    def outranks(self, new, current):
        return self.ranks[new] > self.ranks[current]
