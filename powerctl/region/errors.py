"""
The region's data-layer errors.

The store raises these, and only these, for conditions a caller can act on;
the REST API maps each class to one HTTP status (404, 409, 400) and the AMP
side to one AMP error, so neither needs to parse database messages.
"""

from powerctl.powerdoc import InvalidPowerDocument


class StoreError(Exception):
    """Base of every expected data-layer failure. ``code`` is stable."""

    code = "error"

    def __init__(self, message):
        super().__init__(message)
        self.message = message

    def __str__(self):
        return self.message


class NotFound(StoreError, LookupError):
    """The node, operation, pod manager or pserv named does not exist."""

    code = "not_found"


class Conflict(StoreError):
    """The change clashes with what is stored (duplicate name, still in use)."""

    code = "conflict"


class FenceRefused(Conflict):
    """
    A fence asked of a node none of whose power levels can prove it off (its
    agents cannot query, no level is trusted unverified); nothing journalled.
    """

    code = "fence_refused"


class InvalidInput(StoreError, ValueError):
    """The input is malformed; nothing was written."""

    code = "invalid_input"


class PowerDocumentRefused(InvalidInput, InvalidPowerDocument):
    """
    The region refused a node's power document (the REST API answers 400
    ``invalid_power``): the shared model's :class:`InvalidPowerDocument`,
    raised where the region checks it, so it is also an :class:`InvalidInput`.
    """

    code = "invalid_power"

    def __init__(self, message, agent=None, parameter=None, where=None):
        InvalidPowerDocument.__init__(self, message, agent, parameter, where)
        self.message = str(self.args[0])

    @classmethod
    def of(cls, error):
        """The region's refusal carrying what the model's ``error`` says."""
        return cls(error.reason, error.agent, error.parameter, error.where)


class Unavailable(StoreError):
    """What is needed to do it safely (a pserv) cannot be reached now; retry."""

    code = "unavailable"


class StaleEpoch(Conflict):
    """A report from a pserv that no longer owns the node (a fencing token refused)."""

    code = "stale_epoch"
