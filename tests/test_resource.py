"""
The base of the region's web resources, in memory: an answer computed by a
coroutine is written; a bug answers 500 with an id that is logged with the
traceback (a database error without its DETAIL) and never sent; nothing is
written to a client already gone.
"""

import psycopg2
from twisted.internet import defer
from twisted.logger import globalLogPublisher
from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

from powerctl.region.resource import AsyncResource, SanitisedDatabaseError


class Text(AsyncResource):
    """Answers ``(status, text)``, from ``produce`` (a coroutine function)."""

    kind = "test"

    def __init__(self, produce):
        super().__init__()
        self.produce = produce

    async def answer(self, request):
        return 200, await self.produce()

    def internal_error(self, request, error_id):
        return 500, f"failed: {error_id}"

    def write(self, request, answer):
        status, text = answer
        request.setResponseCode(status)
        request.write(text.encode())
        request.finish()


class Boom(psycopg2.Error):
    """A database error whose details must not be logged."""

    def __str__(self):
        return "DETAIL: Key (password)=(hunter2) already exists"


def render(resource, request):
    request.path = b"/thing"
    resource.render(request)
    return request


class AsyncResourceTests(unittest.TestCase):
    def test_the_answer_is_written(self):
        async def produce():
            return "hello"

        request = render(Text(produce), DummyRequest([]))
        self.assertEqual((request.responseCode, b"".join(request.written)), (200, b"hello"))
        self.assertEqual(request.finished, 1)

    def test_a_bug_answers_500_with_the_id_it_is_logged_under(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        async def produce():
            raise Boom()

        request = render(Text(produce), DummyRequest([]))
        self.assertEqual(request.responseCode, 500)
        error_id = b"".join(request.written).decode().removeprefix("failed: ")
        logged = [e for e in events if e.get("error_id") == error_id]
        self.assertEqual(len(logged), 1)
        self.assertEqual((logged[0]["kind"], logged[0]["method"], logged[0]["path"]),
                         ("test", "GET", "/thing"))
        self.assertNotIn("hunter2", str(logged[0]["log_failure"].value))
        self.assertEqual(len(self.flushLoggedErrors(SanitisedDatabaseError)), 1)

    def test_nothing_is_written_to_a_client_already_gone(self):
        answer = defer.Deferred()
        request = render(Text(lambda: answer), DummyRequest([]))
        request.processingFailed(Exception("client gone"))
        answer.callback("too late")
        self.assertEqual(request.written, [])
