"""
``powerctl activity`` against the region's API served in memory (as in
:mod:`tests.test_cli_rest`), its live view answering the document a real
pserv gives over AMP (:func:`tests.test_activity._document`, which includes
a pserv that did not answer).  The table itself is tested in
:mod:`tests.test_activity`.
"""

import json

from tests.test_activity import _document
from tests.test_cli_rest import RegionApiMixin
from tests.test_store import StoreTestCase


class ActivityCommandTests(RegionApiMixin, StoreTestCase):
    def more_api_arguments(self):
        self.doc = _document()
        self.asked = []

        def live_activity(node=None, cluster=None):
            self.asked.append((node, cluster))
            return self.doc

        return {"live_activity": live_activity}

    async def test_the_command(self):
        await self.store.nodes.create("n2", "c1", {"mode": "single", "agents": [
            {"driver": "manual", "params": {"label": "rack 2"}}]})
        status, out, err = await self.cli("activity", "--node", "n2")
        self.assertEqual(self.sent()[-1][:3], ("GET", "/v1/activity", {"node": "n2"}))
        self.assertEqual(self.asked, [("n2", "c1")])
        self.assertEqual(status, 1)  # one pserv did not answer
        self.assertIn("no complete answer from pserv(s)", err)
        self.assertIn("waiting #1", out)
        status, out, err = await self.cli("activity", "--json")
        self.assertEqual(self.sent()[-1][2], {})
        self.assertEqual(json.loads(out), self.doc)
        self.doc["pservs"].pop()
        status, out, err = await self.cli("activity")
        self.assertEqual((status, err), (0, ""))

    async def test_an_unknown_node(self):
        status, out, err = await self.cli("activity", "--node", "ghost")
        self.assertEqual((status, out, err),
                         (1, "", "error (not_found): node 'ghost' does not exist\n"))
        self.assertEqual(self.asked, [])
