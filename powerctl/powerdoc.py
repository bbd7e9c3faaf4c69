"""
A node's power document: the one model of it that the region, the pserv
and the CLI share.

This module depends on nothing of the region's (no database, no store), so
the pserv and the CLI import it as they are.
"""


class InvalidPowerDocument(ValueError):
    """
    A power document breaks the model's rules; the message says where
    (``power`` or ``power.agents[i]``) and why.  ``agent`` is the index of
    the agent at fault (or None), ``parameter`` the key or driver parameter
    (or None).  The region answers it as
    :class:`~powerctl.region.errors.PowerDocumentRefused`; the pserv refuses
    the operation with :class:`~powerctl.rpc.commands.UnusablePowerConfig`.
    """

    def __init__(self, message, agent=None, parameter=None):
        where = "power" if agent is None else f"power.agents[{agent}]"
        super().__init__(f"{where}: {message}")
        self.reason = message
        self.agent = agent
        self.parameter = parameter
