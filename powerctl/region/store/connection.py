"""
A txpostgres connection that stays registered as a reader for as long as it
is open (issue 14: "txpostgres adds and removes its reader on every query").

txpostgres watches a connection's socket with two objects in turn: the
connection itself while idle (to hear NOTIFYs), and the cursor of each
query while it runs.  So every query unregisters the connection, registers
the cursor, unregisters the cursor once the answer is in and registers the
connection again: four ``epoll_ctl`` calls and their bookkeeping in the
reactor, per query.

Here the connection is the socket's one reader, always: a read while a
query runs is handed to that query's cursor, any other read is the
connection's own (NOTIFYs, the server closing it).  Everything else --
the poll cycle, the answer delivered in a later reactor turn, NOTIFY
observers, the dead-connection detector and its re-connection -- is
txpostgres's, unchanged.
"""

import psycopg2.extensions
from twisted.python import failure
from txpostgres import txpostgres


class ReadableCursor(txpostgres.Cursor):
    """A cursor that never registers itself as a reader: its connection reads for it."""

    def continuePolling(self, swallowErrors=False):
        # txpostgres's, except on POLL_READ (see the module's docstring)
        try:
            state = self.pollable().poll()
        except Exception:
            if self._pollingD:
                d, self._pollingD = self._pollingD, None
                self.reactor.callLater(0, d.errback, failure.Failure())
            elif not swallowErrors:
                raise
            return
        if state == psycopg2.extensions.POLL_OK:
            if self._pollingD:
                d, self._pollingD = self._pollingD, None
                self.reactor.callLater(0, d.callback, self)
        elif state == psycopg2.extensions.POLL_READ:
            self.reactor.addReader(self._connection)  # a no-op while it is registered
        elif state == psycopg2.extensions.POLL_WRITE:
            self.reactor.addWriter(self)
        elif self._pollingD:
            d, self._pollingD = self._pollingD, None
            self.reactor.callLater(0, d.errback, txpostgres.UnexpectedPollResult())
        elif not swallowErrors:
            raise txpostgres.UnexpectedPollResult()


class KeptReadableConnection(txpostgres.Connection):
    """A :class:`txpostgres.txpostgres.Connection` registered as a reader once, while open."""

    cursorFactory = ReadableCursor
    _reading_for = None  # the cursor whose query is under way

    def cursorRunning(self, cursor):
        self._cursors.add(cursor)
        self._reading_for = cursor

    def cursorFinished(self, cursor):
        self._cursors.discard(cursor)
        if self._reading_for is cursor:
            self._reading_for = None
        if not self._connection.closed:
            self.reactor.addReader(self)  # a no-op while it is registered
            self.checkForNotifies()  # heard while the query ran

    def doRead(self):
        if self.pollable().closed:
            self.reactor.removeReader(self)
            return
        cursor = self._reading_for
        if cursor is not None:
            cursor.continuePolling()
        else:
            self.continuePolling()
            self.checkForNotifies()
        if self._connection.closed:
            self.reactor.removeReader(self)
