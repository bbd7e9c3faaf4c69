"""
Every use of pyghmi's private internals, in one place.

The ``ipmi`` driver needs a few things pyghmi's public API does not offer:
interrupting a blocked call, finding sessions still logging in, proposing
cipher suite 3 first, checking the negotiated suite, and identifying a BMC
once per session.  Each needs pyghmi attributes or methods that are not part
of its API, so they all live here and nowhere else (``ipmi.py`` only calls
these functions; public calls such as ``Command(...)``, ``get_power`` and
``set_power`` stay there).

Checked against pyghmi 1.6.0 and 1.6.19 (the tested version; the IPMI tests
pass on both): in that range ``pyghmi/ipmi/private/session.py`` differs only
by a socket buffer size and ``pyghmi/ipmi/command.py`` only by VLAN and
firmware additions, none of which touch what is used below.  setup.cfg caps
pyghmi below 1.7 for that reason; before raising the cap, re-read each item
below against the new ``session.py`` and ``command.py`` and run
``tests/test_ipmi_driver.py``, ``tests/test_ipmi_sim.py`` and
``tests/test_ipmi_peer.py``.

What is used, and why:

``Command.ipmi_session``
    The ``Session`` behind a ``Command``: to know whether it is still
    logged in (reuse), to log it out and to abort it.
``Session.logged``, ``.logging``, ``.broken``, ``.errormsg``,
``.onlogpayload``, ``.lastpayload``
    pyghmi's wait loops re-check ``logging``/``logged`` after every retry
    tick and raise ``errormsg`` once ``broken``: setting them is the only way
    to make a thread blocked in pyghmi give up (:func:`abort_session`).
    ``logged``/``broken`` also tell whether a session can be reused.
``Session.bmc_handlers`` and a session's ``servermode``, ``bmc``, ``port``,
``userid``
    A login runs inside pyghmi's ``Command`` constructor, so a caller that
    gives up during a login holds no object to abort; the class-level table
    of sessions is the only way to find it (:func:`pending_sessions`).
``Session._initsession`` and ``.attemptedhash``
    pyghmi always proposes suite 17 (SHA-256) first; a session class whose
    ``_initsession`` sets ``attemptedhash = 1`` proposes suite 3 (SHA-1)
    straight away, for BMCs that accept 17 and then fail
    (:func:`suite3_session_class`).
``Session.currhashlib``
    The hash the session negotiated: how a pinned suite 17 is verified
    (:func:`negotiated_sha256`).
``Command._oemknown``
    pyghmi re-identifies a BMC of no known OEM (an extra Get Device ID round
    trip) before *every* call unless this is set (:func:`identify_once`).
``Session.ipmicallback``
    After a logout it still holds a bound method of the session: a reference
    cycle, so a retired session (about 10 KB) lived on until the cyclic
    garbage collector ran, and a driver logging out idle sessions grew
    instead of shrinking (issue 14).  :func:`retire` replaces it with a plain
    function, so the session is freed as soon as it is dropped.

Everything is imported on first use, so importing this module does not
import pyghmi (entry points install the asyncio reactor first).
"""

import hashlib

#: The error text of sessions we abandoned on purpose (see abort_session).
ABORTED = "aborted by powerctl"


def session_of(command):
    """The pyghmi ``Session`` behind ``command`` (None for no command)."""
    return getattr(command, "ipmi_session", None)


def is_logged_in(session):
    """Whether ``session`` is logged in and not broken (so reusable)."""
    return bool(session.logged) and not session.broken


def abort_session(session):
    """
    Make a pyghmi session give up from another thread.

    pyghmi offers no way to interrupt a blocked call; its wait loops re-check
    ``logging``/``logged`` after every retry tick (<= ~2 s), so clearing them
    (and marking the session broken so that it is never handed out again)
    makes the stuck thread raise promptly instead of after the full retry
    ladder (~5 s for a login, longer for a command).
    """
    if session is None:
        return
    session.broken = True
    session.errormsg = ABORTED
    session.logging = False
    session.logged = 0
    session.onlogpayload = None
    session.lastpayload = None


def retire(command):
    """
    Close the session of ``command``, which we no longer trust or need
    (quick: no retries).  Call it only where no other thread uses the
    session (a call in a thread of its own holding the BMC's lock).
    """
    session = session_of(command)
    if session is None:
        return
    try:
        if session.logged and not session.broken:
            session.logout()
    except Exception:
        pass
    abort_session(session)
    # the session's last bound method: a cycle that kept it for the GC
    session.ipmicallback = _ignore_answer


def _ignore_answer(response):
    """What a retired session does with a late answer: nothing."""


def pending_sessions(host, port, userid):
    """
    pyghmi sessions to ``host``:``port`` as ``userid`` (bytes) still logging
    in.  A login runs inside pyghmi's constructor, so we never hold the
    object; pyghmi keeps every client session in a class-level table keyed
    by address, which other threads mutate, hence the copies and the retry.
    """
    from pyghmi.ipmi.private import session as ipmisession

    for _ in range(3):
        try:
            return [
                s for handlers in list(ipmisession.Session.bmc_handlers.values())
                if isinstance(handlers, dict)
                for s in list(handlers.values())
                if not getattr(s, "servermode", True) and s.bmc == host
                and s.port == port and s.userid == userid
                and not s.logged
            ]
        except RuntimeError:
            continue
    return []


def suite3_session_class():
    """
    A pyghmi ``Session`` class that proposes cipher suite 3 straight away.

    pyghmi always opens with suite 17 and falls back to 3 only when the BMC
    refuses; some BMCs instead accept 17 and then fail.  Constructing one
    registers the logged-in session in pyghmi's table, where a ``Command``
    built next for the same BMC and user finds and reuses it.
    """
    from pyghmi.ipmi.private import session as ipmisession

    class Suite3Session(ipmisession.Session):
        def _initsession(self):
            super()._initsession()
            self.attemptedhash = 1

    return Suite3Session


def negotiated_sha256(command):
    """Whether the session of ``command`` negotiated SHA-256 (suite 17)."""
    return session_of(command).currhashlib is hashlib.sha256


def identify_once(command):
    """
    Identify the BMC's OEM now and never again for this ``Command``: pyghmi
    otherwise repeats the Get Device ID before every call when the OEM is
    not one it knows.
    """
    command.oem_init()
    command._oemknown = True
