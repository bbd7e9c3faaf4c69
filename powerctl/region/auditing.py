"""
The audit record of an API change written in the change's own transaction
(issue 10): a change is never committed without its record, nor recorded
without being committed.

The guard (:mod:`powerctl.region.guard`) opens an :class:`Intent` for each
write request before its handler runs (:func:`pending`).  The first store
transaction of that request that writes anything -- PostgreSQL has given
it a transaction id -- inserts the audit row before committing
(:func:`write_if_changed`, called by
:func:`powerctl.region.store.base.transaction`).  The intent travels in a
context variable, read when the store method is called (synchronously,
inside the handler's coroutine), so no store method takes an extra
argument.

What is not atomic, precisely:

* a request whose first writing transaction is followed by others (the
  ownership bookkeeping after a node is created or moved, the dispatch of
  an operation) records the first one -- the change the operator asked
  for -- and the later ones are its consequences;
* a request refused before it wrote anything (4xx) is recorded on its own,
  after the refusal: there is no change to be atomic with;
* a request whose change committed and that failed afterwards (a pserv
  gone mid-call, a bug) keeps the committed record, marked ``ok`` with the
  status the route answers on success, and gets a second record with the
  answer it really got.
"""

import contextvars

import attrs

#: The audit intent of the API request being handled, if any.
_PENDING = contextvars.ContextVar("powerctl_audit_intent", default=None)

INSERT = ("INSERT INTO audit (actor, source, method, path, status, outcome) "
          "VALUES (%s, %s, %s, %s, %s, %s)")


@attrs.define
class Intent:
    """One write request's audit record, until a transaction writes it."""

    actor: str
    source: str
    method: str
    path: str
    #: what the route answers when the change succeeds
    status: int
    #: a transaction in progress inserted the row (not committed yet)
    claimed: bool = False
    #: the row is committed, with the change
    written: bool = False
    #: the request is over: no later transaction may write it
    closed: bool = False

    def values(self, status=None, outcome="ok"):
        return (self.actor, self.source, self.method, self.path[:2048],
                self.status if status is None else status, outcome[:1024])


def pending(intent):
    """Make ``intent`` the current request's; returns the token for :func:`done`."""
    return _PENDING.set(intent)


def done(token):
    intent = _PENDING.get()
    if intent is not None:
        intent.closed = True
    _PENDING.reset(token)


def current():
    """The open intent of the request being handled, or None."""
    intent = _PENDING.get()
    if intent is None or intent.written or intent.claimed or intent.closed:
        return None
    return intent


async def write_if_changed(cursor, intent):
    """
    Inside a transaction about to commit: insert ``intent``'s row if the
    transaction wrote anything and no other transaction has it.
    """
    if intent is None or intent.written or intent.claimed or intent.closed:
        return
    await cursor.execute("SELECT txid_current_if_assigned() IS NOT NULL")
    if not cursor.fetchone()[0]:
        return  # read only: the change (if any) comes later
    await cursor.execute(INSERT, intent.values())
    intent.claimed = True


def settle(d, intent):
    """After the transaction of ``d``: its claim is written if it committed, else released."""
    if intent is None:
        return d

    def committed(result):
        if intent.claimed:
            intent.written = True
        return result

    def rolled_back(failure):
        intent.claimed = False
        return failure

    return d.addCallbacks(committed, rolled_back)
