"""
Waiting for what no ``Clock`` can drive.

Most tests run on a :class:`twisted.internet.task.Clock` and never wait.
Some subjects act outside the reactor's control -- a worker thread inside
pyghmi, a child process, a packet on loopback -- and a test must wait for
the *event* (the simulator received the command, the process printed its
line), not sleep and hope.  :func:`until` polls a condition on the real
reactor.  Its deadline only turns a hang into a clear failure: it is
generous on purpose and is never the thing a test asserts.
"""

from twisted.internet import defer, task


async def until(predicate, timeout=30.0, interval=0.01, reactor=None, what=None):
    """
    Return the first truthy value of ``predicate()`` (a plain or ``async``
    callable), checked now and then every ``interval`` seconds; raise
    AssertionError naming ``what`` (or the predicate) if ``timeout``
    seconds pass first.
    """
    if reactor is None:
        from twisted.internet import reactor
    deadline = reactor.seconds() + timeout
    while True:
        value = predicate()
        if isinstance(value, defer.Deferred) or hasattr(value, "__await__"):
            value = await value
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"still waiting after {timeout} s for "
                                 f"{what or getattr(predicate, '__name__', predicate)}"
                                 f" (last: {value!r})")
        await task.deferLater(reactor, interval, lambda: None)
