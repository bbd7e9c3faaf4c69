"""
The doubles of ``powerctl.testing`` keep their promises: the fake drivers
provide the driver interfaces and behave as scripted, the AMP pair moves
nothing until pumped and fails what is in flight when dropped, and the
in-memory HTTP client says so when a resource never answers.  Tests built
on them would otherwise pass for the wrong reason.
"""

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.protocols import amp
from twisted.trial import unittest
from twisted.web import resource, server
from zope.interface.verify import verifyObject

from powerctl.drivers.errors import UnreachableError
from powerctl.drivers.interface import IDriverType, IPowerDriver
from powerctl.power import PowerState
from powerctl.testing.amp import connect
from powerctl.testing.drivers import FakeDriverType, FakePduDriverType
from powerctl.testing.web import InMemoryHttp


class DriverDoubleTests(unittest.TestCase):
    def test_they_provide_the_driver_interfaces(self):
        for driver_type in (FakeDriverType(), FakePduDriverType()):
            verifyObject(IDriverType, driver_type)
        device = FakeDriverType().bind({"device": "d", "password": ""})
        verifyObject(IPowerDriver, device)

    def test_agents_of_one_device_share_it(self):
        fake = FakeDriverType()
        self.assertIs(fake.bind({"device": "d"}), fake.bind({"device": "d"}))
        self.assertIsNot(fake.bind({"device": "d"}), fake.bind({"device": "e"}))

    def test_a_device_answers_at_once_with_the_state_it_reaches(self):
        device = FakeDriverType().device("d")
        self.assertEqual(self.successResultOf(device.on()), PowerState.ON)
        self.assertEqual(self.successResultOf(device.query()), PowerState.ON)
        self.assertEqual(self.successResultOf(device.soft_off()), PowerState.OFF)
        self.assertEqual(device.calls, ["on", "query", "soft_off"])

    def test_a_holding_device_answers_when_told(self):
        device = FakeDriverType(hold=True).device("d")
        first, second = device.off(), device.on()
        self.assertNoResult(first)
        self.assertEqual(device.release(), "off")
        self.assertEqual(self.successResultOf(first), PowerState.OFF)
        self.assertEqual(device.fail(UnreachableError("gone")), "on")
        self.failureResultOf(second, UnreachableError)
        self.assertEqual(device.state, PowerState.OFF)

    def test_a_cancelled_held_call_is_recorded_and_dropped(self):
        device = FakeDriverType(hold=True).device("d")
        d = device.cycle()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual((device.cancelled, device.held), (["cycle"], []))

    def test_a_failing_device_fails_every_call(self):
        device = FakeDriverType().device("d")
        device.failure = UnreachableError("no route")
        self.failureResultOf(device.query(), UnreachableError)

    def test_a_pdu_reads_many_outlets_in_one_recorded_request(self):
        pdu = FakePduDriverType()
        settings = pdu.schema.validate({"host": "10.0.0.1", "outlet": 1})
        pdu.device(("10.0.0.1", 2)).state = PowerState.ON
        self.assertEqual(self.successResultOf(pdu.query_outlets(settings, [1, 2])),
                         {1: PowerState.OFF, 2: PowerState.ON})
        self.assertEqual(pdu.outlet_queries, [("10.0.0.1", "public", [1, 2])])
        pdu.unreachable.add("10.0.0.1")
        self.failureResultOf(pdu.query_outlets(settings, [1]), UnreachableError)


class Echo(amp.Command):
    arguments = [(b"text", amp.Unicode())]
    response = [(b"text", amp.Unicode())]


class EchoServer(amp.AMP):
    def __init__(self):
        super().__init__()
        self.heard = []

    @Echo.responder
    def echo(self, text):
        self.heard.append(text)
        return {"text": text}


class AmpPairTests(unittest.TestCase):
    def test_nothing_moves_until_pumped(self):
        pair = connect(EchoServer(), amp.AMP())
        d = pair.client.callRemote(Echo, text="hi")
        self.assertNoResult(d)
        self.assertEqual(pair.answer(d), {"text": "hi"})

    def test_dropping_the_connection_fails_what_is_in_flight(self):
        pair = connect(EchoServer(), amp.AMP())
        d = pair.client.callRemote(Echo, text="hi")
        results = []
        d.addBoth(results.append)
        pair.disconnect()
        self.assertFalse(pair.connected)
        [failure] = results
        self.assertTrue(failure.check(ConnectionDone), failure)

    def test_an_orderly_close_delivers_what_was_sent_first(self):
        pair = connect(EchoServer(), amp.AMP())
        d = pair.client.callRemote(Echo, text="last words")
        d.addErrback(lambda f: None)
        pair.disconnect(deliver=True)
        self.assertEqual(pair.server.heard, ["last words"])


class Never(resource.Resource):
    isLeaf = True

    def render(self, request):
        return server.NOT_DONE_YET


class InMemoryHttpTests(unittest.TestCase):
    def test_a_resource_that_never_answers_is_reported(self):
        with self.assertRaises(AssertionError):
            InMemoryHttp(Never()).get("/")
