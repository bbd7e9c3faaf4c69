"""
Test doubles for powerctl, shipped with the package (as ``treq.testing`` is
with treq) so that tests -- ours and those of code built on powerctl -- can
exercise the product's own objects without sockets, threads, PostgreSQL or
wall-clock time.

Each double stands in for one kind of I/O at a seam the product is built
around, never for the logic under test:

:mod:`powerctl.testing.amp`
    Two AMP protocols joined in memory (:func:`~powerctl.testing.amp.connect`),
    bytes moved only when the test pumps them; for the region/pserv
    conversation without TCP.
:mod:`powerctl.testing.drivers`
    Fake driver types and devices implementing
    :mod:`powerctl.drivers.interface`, scripted and inspected by the test;
    for the executor, the registry, the pserv and the poller without BMCs.
:mod:`powerctl.testing.region`
    An in-memory journal and lease table with the methods
    :class:`powerctl.region.core.Region`, its AMP responder and its REST API
    call; for the region's coordination without PostgreSQL.
:mod:`powerctl.testing.web`
    A ``StubTreq``-style client for a ``twisted.web`` resource in memory; for
    the REST API without a listening port.
:mod:`powerctl.testing.waiting`
    A deadline-guarded wait for events no Clock drives (a worker thread, a
    child process, a packet on loopback), for the end-to-end tests that
    keep real sockets; never a sleep, never a timed assertion.

Nothing here keeps state at module level: every double is an object a
test builds for itself.
"""
