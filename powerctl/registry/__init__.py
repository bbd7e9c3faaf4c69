"""
The per-node power-action registry: which power action runs, waits,
joins another or is superseded.  See :mod:`powerctl.registry.registry`.
"""

from powerctl.registry.actions import (
    ActionInfo, Cancelled, IPowerAction, NodeActivity, Observed, Outcome,
    PowerAction, Superseded,
)
from powerctl.registry.policy import IRankPolicy, RankPolicy
from powerctl.registry.registry import IActionExecutor, PowerActionRegistry

__all__ = [
    "ActionInfo", "Cancelled", "IActionExecutor", "IPowerAction", "IRankPolicy",
    "NodeActivity", "Observed", "Outcome", "PowerAction", "PowerActionRegistry",
    "RankPolicy", "Superseded",
]
