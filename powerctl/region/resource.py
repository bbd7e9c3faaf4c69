"""
The base of the region's web resources (the REST API, the status page,
``/metrics``): an answer computed by a coroutine, and one way to fail.

Every resource of the region reads the database, so it answers
asynchronously; the client may go away before the answer is ready (then
nothing is written).  An unexpected exception answers 500 with an error
id; the same id is logged through twisted.logger with the traceback, which
never reaches the client -- and database errors are logged without their
DETAIL line, which can quote a row, password included.
"""

import uuid

import psycopg2
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server


class SanitisedDatabaseError(Exception):
    """A database error reduced to its primary message, safe to log."""


def loggable(failure):
    """
    ``failure`` safe to log: a psycopg2 error keeps its traceback but loses
    its DETAIL, which for a constraint violation quotes the failing row.
    """
    error = failure.value
    if not isinstance(error, psycopg2.Error):
        return failure
    primary = getattr(getattr(error, "diag", None), "message_primary", None)
    safe = SanitisedDatabaseError(f"{type(error).__name__}: {primary or 'database error'}")
    return Failure(safe, SanitisedDatabaseError, failure.getTracebackObject())


class AsyncResource(resource.Resource):
    """
    A leaf resource answered by the coroutine :meth:`answer`.

    A subclass implements three methods that agree on the shape of an
    *answer* (for instance ``(status, body, headers)``): :meth:`answer`
    computes it, :meth:`internal_error` makes the one for an unexpected
    failure, :meth:`write` puts it on the wire.  It answers its own
    expected errors (404, 400, ...) in :meth:`answer`; anything escaping
    it is a bug.
    """

    isLeaf = True
    #: What the log calls this resource's requests ("API GET /v1/nodes failed").
    kind = "web"

    def __init__(self, log=None):
        super().__init__()
        self.log = log or Logger()

    def render(self, request):
        """Answer asynchronously; the connection may close before we do."""
        gone = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d = defer.ensureDeferred(self._answer(request))
        d.addCallback(lambda answer: None if gone else self.write(request, answer))
        d.addErrback(lambda f: self.log.failure(
            "writing the answer to {kind} {method} {path} failed", f, kind=self.kind,
            **_where(request)))
        return server.NOT_DONE_YET

    async def _answer(self, request):
        try:
            return await self.answer(request)
        except Exception:
            error_id = str(uuid.uuid4())
            self.log.failure("{kind} {method} {path} failed; error id {error_id}",
                             loggable(Failure()), kind=self.kind, error_id=error_id,
                             **_where(request))
            return self.internal_error(request, error_id)

    async def answer(self, request):
        """The answer to ``request``; an exception is answered by :meth:`internal_error`."""
        raise NotImplementedError

    def internal_error(self, request, error_id):
        """The answer to a request that failed unexpectedly, logged under ``error_id``."""
        raise NotImplementedError

    def write(self, request, answer):
        """Write ``answer`` and finish the request."""
        raise NotImplementedError


def _where(request):
    return {"method": request.method.decode("ascii", "replace"),
            "path": request.path.decode("utf-8", "replace")}
