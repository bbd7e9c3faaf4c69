"""
Hostile HTTP against a real region on a throwaway PostgreSQL.

* A bounded schemathesis run (fixed seed, about 1,100 generated requests,
  well under a minute alone on this 2-core machine): the region's own
  OpenAPI document drives it, and the run must end with no 5xx, no answer
  the document does not describe (status code, content type, headers, body
  shape), no schema-invalid input accepted, and no request left unanswered
  (each has 20 s).  ``POWERCTL_FUZZ_SEED`` replays another seed.
* By hand, what a generator does not send: bodies over the limit (413),
  bodies that are not JSON by content type (415), a URL of 20,000
  characters (414), and slow clients that open a request and never finish
  it: the region closes them after its documented timeout and keeps
  answering everyone else meanwhile.

schemathesis runs as its own process (its HTTP client blocks), so the
reactor in this process keeps serving the region it talks to.
"""

import json
import os
import sys

from twisted.internet import defer, protocol, reactor, task, utils
from twisted.trial import unittest

from powerctl.region import api as api_module
from powerctl.region import http, openapi
from tests.pg import DatabaseMixin
from tests.system import SystemMixin

SEED = int(os.environ.get("POWERCTL_FUZZ_SEED", "20261204"))
#: Generated requests per API operation and phase; with ~20 operations this
#: keeps the run near half a minute alone, about a minute on a loaded machine.
MAX_EXAMPLES = 40
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "response_headers_conformance",
          "negative_data_rejection", "unsupported_method")


class SchemathesisTests(SystemMixin, DatabaseMixin, unittest.TestCase):
    """The region against the generator, its own OpenAPI document as the oracle."""

    timeout = 300
    async def test_no_server_error_or_undocumented_answer(self):
        await self.start_region()
        await self.start_pserv()
        for name in self.nodes:
            await self.add_node(name)
        report = os.path.abspath(self.mktemp())
        os.makedirs(report)
        args = [
            "-m", "schemathesis.cli", "run", f"{self.api}/v1/openapi.json",
            "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES),
            "--phases", "examples,coverage,fuzzing", "--checks", ",".join(CHECKS),
            "--request-timeout", "20", "--workers", "1", "--no-shrink",
            "--header", f"Authorization: Bearer {self.token}",  # as an admin
            "--suppress-health-check", "all", "--continue-on-failure",
            # an endless stream: its answer never ends (tests/test_events_system.py)
            "--exclude-operation-id", "streamEvents",
            "--report", "ndjson", "--report-ndjson-path", os.path.join(report, "run.ndjson"),
        ]
        # its own environment and working directory (it leaves a cache there)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMATHESIS")}
        env["NO_COLOR"] = "1"
        out, err, code = await utils.getProcessOutputAndValue(
            sys.executable, args, env=env, path=report, reactor=reactor)
        text = out.decode("utf-8", "replace") + err.decode("utf-8", "replace")
        cases = _cases(os.path.join(report, "run.ndjson"))
        print(f"schemathesis: {cases} test cases, exit {code}", file=sys.__stderr__)
        self.assertEqual(code, 0, text[-20000:])
        self.assertGreater(cases, 500, text[-3000:])  # it really ran


def _cases(path):
    """How many test cases the run's ndjson report counts (0 when it is not there)."""
    total = 0
    try:
        with open(path) as f:
            for line in f:
                event = json.loads(line)
                for kind, body in event.items():
                    if kind == "ScenarioFinished":
                        total += len((body.get("recorder") or {}).get("cases") or {})
    except FileNotFoundError:
        return 0
    return total


class _Raw(protocol.Protocol):
    """A client that sends raw bytes and keeps all it gets until the server closes."""

    def __init__(self, data, trickle=None):
        self.data = data
        self.trickle = trickle  # (bytes, seconds): send one chunk at a time
        self.received = b""
        self.closed = defer.Deferred()
        self.sender = None

    def connectionMade(self):
        if self.data:
            self.transport.write(self.data)
        if self.trickle:
            chunks = iter(self.trickle[0][i:i + 1] for i in range(len(self.trickle[0])))
            self.sender = task.LoopingCall(lambda: self.transport.write(next(chunks, b" ")))
            self.sender.start(self.trickle[1], now=False)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        if self.sender is not None and self.sender.running:
            self.sender.stop()
        self.closed.callback(self.received)


def _status(raw):
    """The status code of a raw HTTP response, and its JSON body."""
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body) if body.strip() else None


def _documented(test, path, method, status, body):
    """
    The region's OpenAPI document describes ``status`` for that operation,
    and ``body`` fits the schema it gives (what schemathesis checks for the
    answers it can provoke, for the ones only raw bytes provoke).
    """
    import jsonschema_rs  # schemathesis's own validator

    doc = openapi.document()
    answer = doc["paths"][path][method]["responses"].get(str(status))
    test.assertIsNotNone(answer, f"{method} {path} {status} is not in the document")
    schema = answer["content"]["application/json"]["schema"]
    jsonschema_rs.validate(dict(schema, components=doc["components"]), body)


class HandMadeHostileTests(SystemMixin, DatabaseMixin, unittest.TestCase):
    """What a generator does not send, against a running region's HTTP server."""

    timeout = 120

    async def connect(self, data=b"", trickle=None):
        """
        Open a raw connection to the API; the protocol (``.closed`` fires
        with all data).  Requests go as the tests' admin: the token joins
        the ``Host: x`` header line.
        """
        auth = b"\r\nHost: x\r\nAuthorization: Bearer " + self.token.encode() + b"\r\n"
        data = data.replace(b"\r\nHost: x\r\n", auth, 1)
        if trickle:
            trickle = (trickle[0].replace(b"\r\nHost: x\r\n", auth, 1), trickle[1])
        proto = _Raw(data, trickle)
        port = self.region.api_port.getHost().port
        await protocol.ClientCreator(reactor, lambda: proto).connectTCP("127.0.0.1", port)
        self.addCleanup(lambda: proto.transport.connected and proto.transport.abortConnection())
        return proto
    async def test_an_oversized_body_is_refused_without_being_read(self):
        await self.start_region()
        # The header alone says too much: 413 before a byte of the body is sent.
        proto = await self.connect(
            b"POST /v1/nodes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (api_module.MAX_BODY + 1))
        status, body = _status(await proto.closed)
        self.assertEqual((status, body["error"]["code"]), (413, "too_large"))
        _documented(self, "/v1/nodes", "post", status, body)
        # any method: the server refuses by Content-Length before routing
        proto = await self.connect(
            b"GET /v1/clusters HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (api_module.MAX_BODY + 1))
        status, body = _status(await proto.closed)
        self.assertEqual(status, 413)
        _documented(self, "/v1/clusters", "get", status, body)
        # A chunked body that grows past the limit is cut off the same way.
        chunk = b"x" * 65536
        proto = await self.connect(
            b"POST /v1/nodes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + (b"%x\r\n%s\r\n" % (len(chunk), chunk)) * 17)
        status, body = _status(await proto.closed)
        self.assertEqual(status, 413)
        # Exactly at the limit is still read (and judged as JSON: 400, not 413).
        code, body = await self.raw_post(b"[" + b" " * (api_module.MAX_BODY - 2) + b"]")
        self.assertEqual((code, body["error"]["code"]), (400, "invalid_input"))
        self.assertEqual(await self.get("/v1/nodes"), [])  # nothing was written

    async def raw_post(self, data, ctype=b"application/json", path=b"/v1/nodes"):
        proto = await self.connect(
            b"POST %s HTTP/1.0\r\nHost: x\r\nContent-Type: %s\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path, ctype, len(data), data))
        return _status(await proto.closed)
    async def test_bodies_that_are_not_json_by_content_type(self):
        await self.start_region()
        node = json.dumps({"name": "n1", "cluster": "c1", "power": {
            "agents": [{"driver": "manual", "params": {"label": "a"}}]}}).encode()
        for ctype in (b"text/plain", b"application/x-www-form-urlencoded",
                      b"multipart/form-data; boundary=x", b"application/jsonx",
                      b"application/xml", b""):
            code, body = await self.raw_post(node, ctype)
            self.assertEqual((code, (body or {}).get("error", {}).get("code")),
                             (415, "unsupported_media_type"), (ctype, body))
            _documented(self, "/v1/nodes", "post", code, body)
        self.assertEqual(await self.get("/v1/nodes"), [])
        code, body = await self.raw_post(node, b"application/json; charset=utf-8")
        self.assertEqual(code, 201, body)  # the same body, declared right, is taken
    async def test_a_20000_character_url_is_414_and_the_region_goes_on(self):
        await self.start_region()
        proto = await self.connect(b"GET /v1/nodes/" + b"a" * 20000 + b" HTTP/1.1\r\n"
                                   b"Host: x\r\n\r\n")
        status, body = _status(await proto.closed)
        self.assertEqual((status, body["error"]["code"]), (414, "uri_too_long"))
        _documented(self, "/v1/nodes/{name}", "get", status, body)
        proto = await self.connect(b"GET /v1/nodes HTTP/1.1\r\nHost: x\r\nX-Big: "
                                   + b"b" * 20000 + b"\r\n\r\n")
        status, body = _status(await proto.closed)
        self.assertEqual(status, 431)
        _documented(self, "/v1/nodes", "get", status, body)
        # a long URL under the limit is an ordinary request (here: no such node)
        code, body = await self.call("GET", "/v1/nodes/" + "a" * 8000)
        self.assertEqual(code, 404)
    async def test_slow_clients_are_closed_and_others_served_meanwhile(self):
        await self.start_region()
        site = self.region.api_port.factory
        self.assertEqual((site.request_timeout, site.timeOut),
                         (http.REQUEST_TIMEOUT, http.IDLE_TIMEOUT))  # the documented ones
        site.request_timeout = 1.0  # a short one, to keep the test short
        site.timeOut = 1.0
        # headers, then silence instead of the promised body
        stalled = await self.connect(
            b"POST /v1/nodes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{")
        # a request trickled a byte at a time, each well within the idle timeout
        trickling = await self.connect(trickle=(b"GET /v1/nodes HTTP/1.1\r\nHost: x\r\n"
                                                b"X-Pad: " + b"p" * 1000, 0.05))
        # a connection that never says anything
        silent = await self.connect()
        for _ in range(5):  # everyone else is answered meanwhile
            self.assertEqual(await self.get("/v1/nodes"), [])
        for proto in (stalled, trickling):
            status, body = _status(await proto.closed)
            self.assertEqual((status, body["error"]["code"]), (408, "request_timeout"))
            _documented(self, "/v1/nodes", "get", status, body)
        self.assertEqual(await silent.closed, b"")  # idle: closed without a word
        self.assertEqual(await self.get("/v1/nodes"), [])
