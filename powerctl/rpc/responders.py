"""
The one wrapper around every AMP responder, on both sides
(``locateResponder`` of :class:`powerctl.region.rpc.RegionProtocol` and of
:class:`powerctl.pserv.link.PservProtocol`).

AMP closes the whole connection when a responder raises an exception its
command does not declare, or when a box cannot even be parsed.  Here one
bad box costs only its own answer:

* a box missing an argument answers ``BAD_ARGUMENTS`` with one log line (no
  traceback); when ``fatal()`` says so (the region, before the peer has
  authenticated) the answer is fatal: the connection is closed on purpose;
* a declared error raised while parsing (a malformed JSON argument) answers
  with its declared code, as one raised by the responder does;
* anything else (a bug) is logged once with its traceback and answers
  ``INTERNAL_ERROR``; the connection stays up.
"""

from twisted.internet import defer
from twisted.protocols import amp
from twisted.python.failure import Failure

from powerctl.rpc import commands

INTERNAL = commands.InternalError


def _code(command, error_class):
    """The code ``command`` declares for ``error_class`` (AMP's own commands may not)."""
    for cls in (error_class, INTERNAL):
        if cls in command.allErrors:
            return command.allErrors[cls]
    return amp.UNKNOWN_ERROR_CODE


def _peer(protocol):
    transport = getattr(protocol, "transport", None)
    return transport.getPeer() if transport is not None else None


def guard(protocol, name, responder, log, fatal=lambda: False):
    """
    ``responder`` (what ``amp.AMP.locateResponder`` found for ``name``),
    answering only errors its command declares.
    """
    entry = protocol._commandDispatch.get(name)
    if entry is None:  # not a declared command's responder: nothing to check against
        return responder
    command = entry[0]

    def refuse(box, missing):
        asks = amp.ASK in box
        if fatal():
            log.warn("peer {peer} sent {command} without argument(s) {missing} before "
                     "authenticating: closing the connection", peer=_peer(protocol),
                     command=command.__name__, missing=", ".join(missing))
            if not asks:
                protocol.transport.loseConnection()
                return None
            return Failure(amp.RemoteAmpError(
                _code(command, commands.BadArguments),
                f"missing argument(s) {', '.join(missing)}", fatal=True))
        log.warn("peer {peer} sent {command} without argument(s) {missing}: refused",
                 peer=_peer(protocol), command=command.__name__, missing=", ".join(missing))
        return Failure(amp.RemoteAmpError(_code(command, commands.BadArguments),
                                          f"missing argument(s) {', '.join(missing)}"))

    def declared(failure, box):
        if failure.check(amp.RemoteAmpError):
            answer = failure  # a declared error, already in AMP's terms
        elif failure.check(*command.allErrors):  # raised while parsing the arguments
            known = failure.check(*command.allErrors)
            answer = Failure(amp.RemoteAmpError(
                _code(command, known), str(failure.value), known in command.fatalErrors,
                local=failure))
        else:
            log.failure("{command} from {peer} failed unexpectedly; answered INTERNAL_ERROR",
                        failure, command=command.__name__, peer=_peer(protocol))
            answer = Failure(amp.RemoteAmpError(
                _code(command, INTERNAL), "internal error; the peer's log has the traceback",
                local=failure))
        if amp.ASK in box:
            return answer
        # Nobody to answer: AMP would drop the connection over any failure.
        log.warn("{command} from {peer} (no answer asked) failed: {why}",
                 command=command.__name__, peer=_peer(protocol), why=answer.value)
        if answer.value.fatal:
            protocol.transport.loseConnection()
        return None

    def guarded(box):
        missing = [key.decode("ascii", "replace") for key, argument in command.arguments
                   if not getattr(argument, "optional", False) and key not in box]
        if missing:
            return defer.maybeDeferred(refuse, box, missing)
        return defer.maybeDeferred(responder, box).addErrback(declared, box)

    return guarded
