"""
How a call over AMP fails short of a bug, for both ends.

A caller traps these -- a warning, then a retry or the next round -- and
logs anything else with its traceback (``log.failure``), since only a bug
gets there: the responders answer undeclared exceptions as the declared
``InternalError`` (:mod:`powerctl.rpc.responders`).
"""

from twisted.internet import defer, error
from twisted.protocols import amp

#: The call got no answer: the connection went (or was switched to another
#: protocol), or the call was cancelled or timed out.  It may be sent again.
NO_ANSWER = (error.ConnectionClosed, amp.ProtocolSwitched, defer.CancelledError,
             defer.TimeoutError)


#: The peer answered with an error it could not declare: a command it does
#: not handle (another version; ``UnhandledCommand``) or an undeclared
#: exception (a peer without the responder guard).  The peer's problem, not
#: the caller's: what went wrong there is logged there.
UNDECLARED_ANSWER = (amp.UnhandledCommand, amp.RemoteAmpError)


def expected(failure, *commands):
    """
    Whether ``failure`` of a call of one of ``commands`` is one to expect:
    no answer (:data:`NO_ANSWER`), an error those commands declare, or an
    undeclared error answer (:data:`UNDECLARED_ANSWER`).
    """
    declared = [e for command in commands for e in command.errors]
    return failure.check(*NO_ANSWER, *UNDECLARED_ANSWER, *declared) is not None
