"""
Two AMP protocols joined in memory.

:func:`connect` hands a server and a client protocol one in-memory
transport each (:mod:`twisted.test.iosim`) and returns an :class:`AmpPair`.
Nothing moves until the test calls :meth:`AmpPair.flush`, so a test sees
exactly what is in flight at each step, can drop the connection at any
point, and never waits for a socket or the reactor.  Time is the test's
``Clock`` (each flush runs the calls that are due *now*, never later ones).
"""

import attrs
from twisted.internet import task
from twisted.test import iosim


@attrs.frozen
class AmpPair:
    """
    A connected ``server`` and ``client`` protocol and the pump between
    them.  ``clock`` is the Clock the pump runs zero-delay calls on.
    """

    server: object
    client: object
    pump: iosim.IOPump
    clock: task.Clock

    def flush(self):
        """
        Deliver everything either side has written, and whatever that
        provokes, until both are quiet.  True if any bytes moved.
        """
        return self.pump.flush()

    def answer(self, d):
        """
        The outcome of ``d`` (what a ``callRemote`` returned) once everything
        in flight is delivered: its result, or its Failure.  Take answers
        through here rather than flushing first and looking after: AMP hangs
        its own "unhandled error" handler on the Deferred when an error
        answer arrives, and it swallows a failure nobody was waiting for.
        AssertionError if no answer came.
        """
        box = []
        d.addBoth(box.append)
        self.flush()
        if not box:
            raise AssertionError("no answer arrived")
        return box[0]

    def disconnect(self, deliver=False):
        """
        Drop the connection and deliver ``connectionLost`` to both
        protocols: every ``callRemote`` still unanswered fails with a
        connection error.  By default bytes not yet delivered are lost, as
        on a broken link; with ``deliver`` they arrive first, as before an
        orderly close.
        """
        if not deliver:
            self.pump.clientIO.getOutBuffer()
            self.pump.serverIO.getOutBuffer()
        self.pump.clientIO.loseConnection()
        self.pump.flush()

    @property
    def connected(self):
        """False once either side's transport was closed."""
        return not (self.pump.clientIO.disconnecting or self.pump.serverIO.disconnecting)


def connect(server, client, clock=None, greet=True, peer=None):
    """
    Join ``server`` and ``client`` (protocol instances, typically
    ``amp.AMP`` subclasses) in memory.  ``connectionMade`` runs on both,
    server first; with ``greet`` (the default) whatever that starts -- a
    hand-shake, say -- is pumped to completion before this returns.
    ``peer`` is the address the server sees the client at (an
    ``IPv4Address``; by default one of iosim's, different each time).
    """
    clock = clock if clock is not None else task.Clock()
    server_transport = iosim.makeFakeServer(server)
    if peer is not None:
        server_transport.peerAddress = peer
    pump = iosim.connect(server, server_transport,
                         client, iosim.makeFakeClient(client),
                         greet=greet, clock=clock)
    return AmpPair(server=server, client=client, pump=pump, clock=clock)
