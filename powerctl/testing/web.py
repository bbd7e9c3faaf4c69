"""
A ``twisted.web`` resource served in memory, for tests of the REST API
(:mod:`powerctl.region.api`) and the status page without a listening port.

:class:`InMemoryHttp` wraps :class:`treq.testing.StubTreq`: requests go
through the real ``Site``/``Request`` machinery (headers, status codes,
bodies, ``NOT_DONE_YET``) over an in-memory transport, and each call
returns the answer at once -- the resource's asynchronous work runs to
completion while the stub is flushed, provided it waits only on fakes
(:mod:`powerctl.testing.region`) and not on the reactor.
"""

import json

import attrs
from treq.testing import StubTreq


@attrs.frozen
class Answer:
    """One HTTP answer: status, headers (a ``Headers``) and the raw body."""

    code: int
    headers: object
    body: bytes

    def json(self):
        return json.loads(self.body)

    def header(self, name):
        """The first value of header ``name`` as text, or None."""
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None


class InMemoryHttp:
    """
    Requests to ``resource`` (the site's root) in memory.  Paths are
    absolute (``/v1/nodes``); ``json=`` sends a JSON body with its
    content type, ``data=`` and ``headers=`` anything else (as treq).
    ``headers`` given here go with every request (an API token, say).
    """

    def __init__(self, resource, headers=None):
        self.stub = StubTreq(resource)
        self.headers = dict(headers or {})

    def request(self, method, path, json=None, **kwargs):
        """
        The answer to one request.  Raises AssertionError when the
        resource has not answered once everything in memory was delivered
        (it is waiting for something the test has not done).
        """
        if json is not None:
            kwargs["json"] = json
        kwargs["headers"] = {**self.headers, **(kwargs.get("headers") or {})}
        d = self.stub.request(method, "http://powerctl.test" + path, **kwargs)
        self.stub.flush()
        response = _result(d, f"{method} {path}: no response")
        body = self.stub.content(response)
        self.stub.flush()
        return Answer(response.code, response.headers,
                      _result(body, f"{method} {path}: the body never ended"))

    def get(self, path, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path, json=None, **kwargs):
        return self.request("POST", path, json=json, **kwargs)

    def put(self, path, json=None, **kwargs):
        return self.request("PUT", path, json=json, **kwargs)

    def delete(self, path, **kwargs):
        return self.request("DELETE", path, **kwargs)


def _result(d, message):
    """The result of an already-fired Deferred (its failure raised)."""
    box = []
    d.addBoth(box.append)
    if not box:
        raise AssertionError(message)
    result = box[0]
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result
