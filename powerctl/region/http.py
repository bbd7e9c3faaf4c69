"""
The region's HTTP server: twisted.web's, with limits a hostile or broken
client cannot get around, answered in the API's JSON error shape.

* **414** for a request line (method, URL, version) longer than
  :data:`MAX_LINE` bytes, **431** for a header line that long; the
  connection is closed after the answer (twisted.web alone drops it without
  a word).
* **413** for a body over ``max_body`` bytes (1 MiB, the API's limit), as
  soon as the ``Content-Length`` header says so, or once a chunked body
  grows past it: the body is never read to the end nor stored.
* **408** for a client that does not finish sending its request (line,
  headers and body) within ``request_timeout`` seconds (default
  :data:`REQUEST_TIMEOUT`) of its first byte, however it trickles: one byte
  every few seconds does not keep a connection. The connection is closed.
* A connection idle between requests is closed after ``idle_timeout``
  seconds (default :data:`IDLE_TIMEOUT`), without an answer.

Each of these is logged with one line naming the peer.  None of it holds
up other clients: the event loop never waits on a socket.
"""

import json
import re

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger
from twisted.web import http, server

from powerctl.region.api import MAX_BODY, error_body

#: Longest request line (and header line), bytes: twisted.web's own limit.
MAX_LINE = 16384
#: Seconds a client has to send a whole request, from its first byte.
REQUEST_TIMEOUT = 30.0
#: Seconds a connection may stay idle between requests.
IDLE_TIMEOUT = 60.0

_REASONS = {408: b"Request Timeout", 413: b"Content Too Large", 414: b"URI Too Long",
            431: b"Request Header Fields Too Large"}


#: Bytes twisted.web's access log writes as they are: printable ASCII but
#: the quotes and the backslash, which it escapes.
_PLAIN = re.compile(rb"[ !#-&(-\[\]-~]*")


def access_line(timestamp, request):
    """
    twisted.web's combined access log line (``combinedLogFormatter``), the
    same text, made without its per-field ``repr`` escaping when there is
    nothing to escape (every ordinary request); anything else is left to
    twisted.web's own formatter.
    """
    peer = request.getClientAddress()
    referrer = request.getHeader(b"referer") or b"-"
    agent = request.getHeader(b"user-agent") or b"-"
    plain = _PLAIN.fullmatch
    if not (isinstance(peer, (IPv4Address, IPv6Address))
            and plain(peer.host.encode("ascii", "replace")) and plain(referrer)
            and plain(agent) and plain(request.method) and plain(request.uri)
            and plain(request.clientproto)):
        return http.combinedLogFormatter(timestamp, request)
    return '"%s" - - %s "%s %s %s" %d %s "%s" "%s"' % (
        peer.host, timestamp, request.method.decode("ascii"), request.uri.decode("ascii"),
        request.clientproto.decode("ascii"), request.code, request.sentLength or "-",
        referrer.decode("ascii"), agent.decode("ascii"))


def _error_response(status, code, message):
    """A complete HTTP/1.1 error response that closes the connection, as bytes."""
    body = json.dumps(error_body(code, message)).encode("utf-8") + b"\n"
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % (status, _REASONS[status], len(body))) + body


class LimitedRequest(server.Request):
    """
    A request that stops taking a chunked body once it is over the site's
    limit.  Its site never parses form bodies (``parsePOSTFormSubmission``
    off, see :class:`Site`): nothing here takes a form but the login, which
    reads its own, and twisted.web's multipart parser answers a malformed
    one with a bare 400 and a dropped connection -- the resource answers 415
    as for any other body that is not JSON.  (It also spares every POST a
    parse of its Content-Type through the ``email`` package.)
    """

    _body_bytes = 0

    def handleContentChunk(self, data):
        self._body_bytes += len(data)
        if self._body_bytes > self.channel.site.max_body:
            self.channel.refuse(413, "too_large",
                                f"the request body exceeds {self.channel.site.max_body} bytes")
            return
        super().handleContentChunk(data)


class LimitedChannel(http.HTTPChannel):
    """An HTTP/1.1 channel enforcing the limits in this module's docstring."""

    MAX_LENGTH = MAX_LINE
    log = Logger()
    #: The timer of the request deadline.  It is kept (disarmed) once a
    #: request is in, and moved for the next request of the connection:
    #: one timer per connection, not one created and cancelled per request.
    _deadline = None
    _armed = False
    _refused = False

    def dataReceived(self, data):
        if self._refused:
            return
        if data and not self._armed and not self._handlingRequest:
            # the first byte of a request starts its clock
            self._armed = True
            timeout = self.site.request_timeout
            if self._deadline is not None and self._deadline.active():
                self._deadline.reset(timeout)
            else:
                self._deadline = self.callLater(timeout, self._too_slow)
        super().dataReceived(data)

    def lineReceived(self, line):
        if not self._refused:
            super().lineReceived(line)

    def rawDataReceived(self, data):
        if not self._refused:
            super().rawDataReceived(data)

    def lineLengthExceeded(self, line):
        # No request is open while the request line is awaited; once it is
        # parsed the request exists and the long line is a header.
        if not self.requests:
            self.refuse(414, "uri_too_long",
                        f"the request line exceeds {self.MAX_LENGTH} bytes")
        else:
            self.refuse(431, "header_too_large",
                        f"a header line exceeds {self.MAX_LENGTH} bytes")

    def allHeadersReceived(self):
        super().allHeadersReceived()
        limit = self.site.max_body
        if self.length is not None and self.length > limit:
            self.refuse(413, "too_large", f"the request body exceeds {limit} bytes "
                        f"(Content-Length: {self.length})")

    def allContentReceived(self):
        self._stop_clock()
        super().allContentReceived()

    def _too_slow(self):
        self._deadline = None
        if not self._armed:
            return  # no request under way: the idle timeout is twisted.web's
        self._armed = False
        self.refuse(408, "request_timeout", "the request was not complete within "
                    f"{self.site.request_timeout:g} s")

    def _stop_clock(self):
        """Disarm the request deadline (its timer is kept for the next request)."""
        self._armed = False

    def connectionLost(self, reason):
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None
        self._armed = False
        super().connectionLost(reason)

    def refuse(self, status, code, message):
        """Answer ``status`` in the API's error shape, once, and close the connection."""
        if self._refused:
            return
        self._refused = True
        self._stop_clock()
        self.log.info("HTTP {status} to {peer}: {message}; closing the connection",
                      status=status, peer=str(self.transport.getPeer()), message=message)
        self.transport.write(_error_response(status, code, message))
        self.loseConnection()


class Site(server.Site):
    """
    A :class:`twisted.web.server.Site` using :class:`LimitedChannel`.  The
    limits are attributes, read for each connection and request, so they
    can be changed on a running site.
    """

    protocol = LimitedChannel

    def __init__(self, resource, max_body=MAX_BODY, request_timeout=REQUEST_TIMEOUT,
                 idle_timeout=IDLE_TIMEOUT, **kwargs):
        kwargs.setdefault("parsePOSTFormSubmission", False)  # see LimitedRequest
        kwargs.setdefault("logFormatter", access_line)
        super().__init__(resource, requestFactory=LimitedRequest, timeout=idle_timeout,
                         **kwargs)
        self.max_body = max_body
        self.request_timeout = request_timeout
