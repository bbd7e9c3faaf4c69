"""
Hostile input to the REST API (a real API on a real store): NUL characters
PostgreSQL refuses, bodies nested thousands of levels deep, text that is not
UTF-8.  Each is a 4xx naming what is wrong -- never a 500 -- and writes
nothing.
"""

import json

from twisted.internet import defer

from powerctl.region.api import MAX_DEPTH
from tests.test_api import ADMIN, ApiTestCase, case
from tests.test_store import ipmi


def nested(depth, inner="x"):
    """A JSON text of ``depth`` arrays around ``inner``."""
    return "[" * depth + json.dumps(inner) + "]" * depth


class HostileInputTests(ApiTestCase):
    def setUp(self):
        d = super().setUp()
        d.addCallback(lambda _: defer.ensureDeferred(self.seed()))
        return d

    async def seed(self):
        await self.store.nodes.create("n1", "c1", ipmi())
        self.op = await self.store.ops.request("n1", "on", requester="test")

    async def refused_quietly(self, cases):
        """:meth:`refused`, and nothing logged as a failure (no 500 anywhere)."""
        await self.refused(cases)
        self.assertEqual([e for e in self.events if "log_failure" in e], [])

    async def test_nul_in_a_path_segment(self):
        await self.refused_quietly([
            case("GET", "/nodes/n1%00", fragment="path segment 2"),
            case("DELETE", "/nodes/n1%00x", fragment="NUL"),
            case("PUT", "/nodes/n%001", {"cluster": "c2"}, fragment="path segment 2"),
            case("POST", "/nodes/n1%00/power", {"action": "on"}, fragment="NUL"),
            case("GET", f"/power_ops/{self.op['id']}%00", fragment="path segment 2"),
            case("GET", "/pod_manager/%00", fragment="path segment 2"),
            case("PUT", "/clusters/c1%00", {"drift_policy": "enforce"}, fragment="NUL"),
        ])

    async def test_nul_in_a_query_parameter(self):
        await self.refused_quietly([
            case("GET", "/nodes?cluster=c1%00", fragment="'cluster'"),
            case("GET", "/power_ops?node=n1%00", fragment="'node'"),
            case("GET", "/power_ops?node=n1&state=pending%00", fragment="'state'"),
            case("DELETE", "/nodes/n1?requester=bob%00", fragment="'requester'"),
        ])

    async def test_nul_in_any_json_string_names_the_field(self):
        bad_host = ipmi()
        bad_host["agents"][0]["params"]["host"] = "10.0.0.1\u0000"
        bad_key = ipmi()
        bad_key["agents"][0]["params"]["ho\u0000st"] = "h"
        await self.refused_quietly([
            case("POST", "/nodes", {"name": "n\u00002", "cluster": "c1", "power": ipmi()},
                 fragment="name: must not contain a NUL"),
            case("POST", "/nodes", {"name": "n2", "cluster": "c\u0000", "power": ipmi()},
                 fragment="cluster:"),
            case("POST", "/nodes", {"name": "n2", "cluster": "c1", "power": bad_host},
                 fragment="power.agents[0].params.host:"),
            case("POST", "/nodes", {"name": "n2", "cluster": "c1", "power": bad_key},
                 fragment="field name"),
            case("PUT", "/nodes/n1", {"cluster": "c\u00002"}, fragment="cluster:"),
            case("POST", "/nodes/n1/power", {"action": "on", "requester": "b\u0000b"},
                 fragment="requester:"),
            case("POST", f"/power_ops/{self.op['id']}/cancel", {"requester": "\u0000"},
                 fragment="requester:"),
            case("POST", "/pod_managers", {"name": "p", "url": "https://x",
                                           "password": "pw\u0000"}, fragment="password:"),
            case("PUT", "/clusters/c1", {"drift_policy": "enforce\u0000"},
                 fragment="drift_policy:"),
            # an unpaired surrogate cannot be stored either
            case("POST", "/nodes", raw=b'{"name": "n\\ud800", "cluster": "c1", "power": {}}',
                 fragment="name:"),
        ])

    async def test_deep_nesting_is_refused_before_use(self):
        def body(text):
            return ('{"name": "n2", "cluster": "c1", "power": %s}' % text).encode()

        message = f"deeper than {MAX_DEPTH} levels"
        await self.refused_quietly([
            case("POST", "/nodes", raw=body(nested(100_000)), code="too_deep", fragment=message),
            case("POST", "/nodes", raw=body("{\"a\":" * 5000 + "1" + "}" * 5000),
                 code="too_deep", fragment=message),
            case("POST", "/nodes", raw=body(nested(MAX_DEPTH)), code="too_deep",
                 fragment=message),
            case("POST", "/nodes/n1/power", raw=b'{"action": ' + nested(3000).encode() + b"}",
                 code="too_deep", fragment=message),
        ])
        # exactly at the limit it is parsed, and refused for what it is
        status, data, _ = await self.call(
            "PUT", "/clusters/c1", raw=('{"drift_policy": %s}' % nested(MAX_DEPTH - 1)).encode())
        self.assertEqual((status, data["error"]["code"]), (400, "invalid_input"))
        self.assertIn("drift_policy: must be one of", data["error"]["message"])

    async def test_text_that_is_not_utf8(self):
        utf16 = json.dumps({"name": "n2", "cluster": "c1", "power": ipmi()}).encode("utf-16")
        await self.refused_quietly([
            case("POST", "/nodes", raw=b'{"name": "n\xff2", "cluster": "c1", "power": {}}',
                 code="malformed_json", fragment="not valid UTF-8"),
            case("POST", "/nodes", raw=utf16, code="malformed_json", fragment="not valid UTF-8"),
            case("GET", "/nodes?cluster=c%ff", fragment="'cluster': not valid UTF-8"),
            case("GET", "/nodes/n%ff1", fragment="not valid UTF-8"),
        ])

    async def test_good_non_ascii_input_still_works(self):
        status, op, _ = await self.call("POST", "/nodes/n1/power",
                                        {"action": "off", "requester": "j\u00fcrg"})
        self.assertEqual((status, op["requester"]), (202, ADMIN))  # the token's name
        status, nodes, _ = await self.call("GET", "/nodes?cluster=z%C3%BCrich")
        self.assertEqual((status, nodes), (200, []))
