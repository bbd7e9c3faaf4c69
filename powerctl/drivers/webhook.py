"""
The ``webhook`` driver: power through configurable HTTP calls (treq).

* ``on``/``off`` call ``on_url``/``off_url`` with ``method`` (default POST);
  any 2xx answer means the command was accepted.
* ``query`` calls ``query_url`` with **GET** (a query must not change
  anything, whatever ``method`` says) and matches the body:
  ``query_on_regex`` -> ON, ``query_off_regex`` -> OFF.  With only one of the
  two, not matching means the other state; with neither, the defaults
  ``\\bon\\b`` / ``\\boff\\b`` (case-insensitive) apply.  A body matching both
  or neither is a protocol error.
* With a ``query_url`` the driver is verified like every protocol driver
  (``on`` asks first, then waits for the state).  **Without** one it is not
  queryable: ``on``/``off``/``cycle`` succeed as soon as the URL answered
  2xx, and *nothing was verified* -- the reported state is only what was
  asked for.  ``query`` then raises UnsupportedError.
* There is no graceful shutdown (``soft_off`` is unsupported).

``headers`` are sent with every call; ``username``/``password`` add basic
auth.  Errors map as for Redfish: 401/403 authentication, refused or dropped
connections unreachable, timeouts, other statuses protocol errors.
"""

import re

import attrs
from twisted.internet import defer
from zope.interface import implementer

from powerctl.drivers.base import Command, VerifyingDriver, with_retries
from powerctl.drivers.bmclimit import address_of_url
from powerctl.drivers.errors import ProtocolError, UnsupportedError
from powerctl.drivers.http import HttpClients, check_status, redact_url
from powerctl.drivers.interface import Capabilities, IDriverType, Timing
from powerctl.drivers.schema import Param, Schema
from powerctl.power import PowerState

SCHEMA = Schema("webhook", (
    Param("on_url", "url", required=True, help="called to power on"),
    Param("off_url", "url", required=True, help="called to power off"),
    Param("query_url", "url", help="GET returning the state; without it nothing is verified"),
    Param("method", "str", default="POST", choices=("POST", "PUT", "GET"),
          help="method for on_url/off_url (the query always uses GET)"),
    Param("headers", "mapping", default=None, secret=True,
          help="extra headers for every call (secret: they may hold credentials)"),
    Param("username", "str", help="basic auth user"),
    Param("password", "str", secret=True),
    Param("query_on_regex", "regex", help="a query body matching this means on"),
    Param("query_off_regex", "regex", help="a query body matching this means off"),
    Param("verify_tls", "bool", default=True),
    Param("timeout", "float", minimum=0.1, help="seconds for one call (default 10)"),
))

DEFAULT_ON = r"(?i)\bon\b"
DEFAULT_OFF = r"(?i)\boff\b"


@attrs.frozen
class StateMatcher:
    """Turns a query body into ON/OFF, following the rules in the module doc."""

    on: re.Pattern | None
    off: re.Pattern | None

    @classmethod
    def from_settings(cls, on_regex, off_regex):
        if on_regex is None and off_regex is None:
            on_regex, off_regex = DEFAULT_ON, DEFAULT_OFF
        return cls(re.compile(on_regex) if on_regex is not None else None,
                   re.compile(off_regex) if off_regex is not None else None)

    def match(self, text):
        """ON or OFF for ``text``; None when the body says neither or both."""
        is_on = bool(self.on.search(text)) if self.on else None
        is_off = bool(self.off.search(text)) if self.off else None
        if is_on is None:
            return PowerState.OFF if is_off else PowerState.ON
        if is_off is None:
            return PowerState.ON if is_on else PowerState.OFF
        if is_on != is_off:
            return PowerState.ON if is_on else PowerState.OFF
        return None


class WebhookDriver(VerifyingDriver):
    """One webhook agent; verified only when it has a ``query_url``."""

    def __init__(self, driver_type, settings, clock, timing):
        super().__init__(clock, timing)
        self.settings = settings
        self._http = driver_type.http.get(settings["verify_tls"])
        self._auth = ((settings["username"], settings["password"] or "")
                      if settings["username"] is not None else None)
        self._matcher = StateMatcher.from_settings(
            settings["query_on_regex"], settings["query_off_regex"])
        self.capabilities = Capabilities(
            queryable=settings["query_url"] is not None, soft_off=False, native_cycle=False)

    def describe(self):
        return f"webhook {redact_url(self.settings['on_url'])}"

    def _call(self, method, url):
        return self._http.request(method, url, headers=self.settings["headers"],
                                  auth=self._auth).addCallback(check_status)

    # -- primitives -----------------------------------------------------

    def read_state(self):
        return defer.ensureDeferred(self._read_state())

    async def _read_state(self):
        url = self.settings["query_url"]
        if url is None:
            raise UnsupportedError(f"{self.describe()}: no query_url, cannot query")
        text = (await self._call("GET", url)).text()
        state = self._matcher.match(text)
        if state is None:
            excerpt = " ".join(text.split())[:80]
            raise ProtocolError(f"{redact_url(url)}: cannot tell on from off in {excerpt!r}")
        return state

    def send(self, command):
        urls = {Command.ON: "on_url", Command.OFF: "off_url"}
        if command not in urls:
            return defer.fail(
                UnsupportedError(f"{self.describe()}: no {command.value} webhook"))
        return self._call(self.settings["method"], self.settings[urls[command]]).addCallback(
            lambda _: None)

    # -- unverified operations when not queryable -----------------------

    def on(self):
        if self.capabilities.queryable:
            return super().on()
        return defer.ensureDeferred(self._unverified(Command.ON, PowerState.ON))

    def off(self):
        if self.capabilities.queryable:
            return super().off()
        return defer.ensureDeferred(self._unverified(Command.OFF, PowerState.OFF))

    def cycle(self):
        if self.capabilities.queryable:
            return super().cycle()
        return defer.ensureDeferred(self._unverified_cycle())

    async def _unverified(self, command, state):
        """Send and report the state asked for: nothing was verified."""
        release = None
        if command is Command.ON and self.circuit is not None:
            release = await self.circuit.acquire()  # held for the call only
        try:
            await with_retries(self.clock, self.timing, lambda: self.send(command),
                               f"{self.describe()} {command.value}", gate=self.bmc)
        finally:
            if release is not None:
                release()
        return state

    async def _unverified_cycle(self):
        await self._unverified(Command.OFF, PowerState.OFF)
        return await self._unverified(Command.ON, PowerState.ON)


@implementer(IDriverType)
class WebhookDriverType:
    """Builds :class:`WebhookDriver` agents; owns their HTTP pools."""

    name = "webhook"
    schema = SCHEMA
    capabilities = Capabilities(queryable=True, soft_off=False, native_cycle=False)

    def __init__(self, reactor, clock=None, timing=Timing(), user_agent=None, limiter=None):
        self.reactor = reactor
        # Per-BMC limits (powerctl.drivers.bmclimit), keyed by on_url's host:port.
        self.limiter = limiter
        self.clock = clock or reactor
        self.timing = timing
        # user_agent: the User-Agent of every request (None: treq's default).
        self.http = HttpClients(reactor, timing.timeout, user_agent=user_agent)

    def bind(self, settings):
        timing = self.timing
        if settings.get("timeout"):
            timing = attrs.evolve(timing, timeout=settings["timeout"])
        driver = WebhookDriver(self, settings, self.clock, timing)
        if self.limiter is not None:
            driver.bmc = self.limiter.handle(address_of_url(settings["on_url"]))
        return driver

    def capabilities_for(self, params):
        """An agent's capabilities: queryable only with a ``query_url``."""
        return attrs.evolve(self.capabilities, queryable=bool(params.get("query_url")))

    def close(self):
        return self.http.close()
