"""
Which idle IPMI sessions the ``ipmi`` driver keeps, and which it logs out.

A logged-in pyghmi session costs about 10 KB of the process's memory
(``bench/ipmi_memory.py``), so a pserv that kept one per BMC held 100 MB
for 10,000 BMCs (issue 14).  Keeping one is worth it only while it will be
reused: a session idle longer than ``max_idle`` is never reused (the BMC may
have timed it out), so at the pserv's default poll interval (60 s, above
``max_idle``) every poll logged in anew anyway, and the kept sessions were
pure cost.  Hence two bounds on the sessions kept between calls:

* age: a session idle for ``max_idle`` seconds is logged out then, on the
  driver's clock, rather than at the next call;
* number: at most ``max_sessions`` idle sessions; when one more becomes
  idle, the least recently used one is logged out.  A BMC being switched
  and verified (a call a second) stays recent; a poll sweep over more BMCs
  than the bound reuses nothing, as it did not at a 60 s interval either.

Sessions in use by a call are not idle, so never chosen.  This module only
decides (keys and times in, keys out); :mod:`powerctl.drivers.ipmi` does
the logging out, in its worker threads.
"""

from collections import OrderedDict


class IdleSessions:
    """
    The idle sessions, least recently used first, with the time each became
    idle.  Keys are opaque (the driver uses its ``BmcKey``).
    """

    def __init__(self, max_sessions, max_idle):
        if max_sessions is not None and max_sessions < 0:
            raise ValueError("max_sessions must be >= 0 or None")
        self.max_sessions = max_sessions
        self.max_idle = max_idle
        self._since = OrderedDict()

    def __len__(self):
        return len(self._since)

    def __contains__(self, key):
        return key in self._since

    def idle(self, key, now):
        """
        ``key``'s session is idle from ``now`` (its call ended, the session
        still logged in).  Returns the keys whose sessions must be logged
        out to stay within ``max_sessions``, least recently used first
        (``key`` itself when the bound is 0).
        """
        self._since.pop(key, None)
        self._since[key] = now
        evicted = []
        if self.max_sessions is not None:
            while len(self._since) > self.max_sessions:
                evicted.append(self._since.popitem(last=False)[0])
        return evicted

    def busy(self, key):
        """``key``'s session is in use (a call started), or gone: not idle."""
        self._since.pop(key, None)

    def expired(self, now):
        """The keys idle for ``max_idle`` or more at ``now``, removed."""
        out = []
        while self._since:
            key, since = next(iter(self._since.items()))
            if now - since < self.max_idle:
                break
            del self._since[key]
            out.append(key)
        return out

    def next_expiry(self):
        """When the oldest idle session reaches ``max_idle`` (None: none idle)."""
        for since in self._since.values():
            return since + self.max_idle
        return None
