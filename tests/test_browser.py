"""
The status page as an operator sees it: a real region on a throwaway
PostgreSQL, a pserv and simulated Redfish BMCs, and the page loaded in
headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by
PyPI's ``selenium``) with a 1280x800 viewport.

String checks on the HTML (tests/test_web.py) cannot tell whether a browser
shows what an operator needs above the fold, whether a hostile value stays
text once parsed, or whether the page wraps or scrolls sideways; this can.

``make peers`` (.ci/ensure-peers) installs the browser; when it cannot, it
leaves the reason in ``.venv-peers/chromium-unavailable`` and this test
skips saying so.  A screenshot of the page is saved under
``$POWERCTL_ARTIFACTS`` (default ``build/test-artifacts``).
"""

import os
import shutil

import psycopg2
from twisted.internet import threads
from twisted.trial import unittest

from tests.pg import DatabaseMixin
from tests.system import SystemMixin, wait_until

try:
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - reported as the skip reason
    webdriver = None

HOSTILE_NODE = '<img src=x onerror="document.title=1">evil'
HOSTILE_REQUESTER = "<script>document.title='owned'</script>"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNAVAILABLE = os.path.join(ROOT, ".venv-peers", "chromium-unavailable")


def _binaries():
    """(chromium, chromedriver) paths, or a skip reason saying what is missing and why."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if webdriver is not None and chromium and driver:
        return chromium, driver
    missing = [what for what, ok in (("PyPI selenium", webdriver is not None),
                                     ("Debian chromium", chromium),
                                     ("Debian chromium-driver", driver)) if not ok]
    reason = f"headless browser test: {', '.join(missing)} not installed"
    if os.path.exists(UNAVAILABLE):
        with open(UNAVAILABLE) as f:
            reason += f"; .ci/ensure-peers could not install it: {f.read().strip()}"
    else:
        reason += "; `make peers` (.ci/ensure-peers) installs it"
    return reason


class Browser:
    """
    One headless Chromium.  Every call blocks, so the test runs them in a
    thread (``threads.deferToThread``) while the reactor serves the region.
    """

    def __init__(self, chromium, chromedriver):
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                    "--disable-gpu", "--window-size=1280,800"):
            options.add_argument(arg)
        self.driver = webdriver.Chrome(options=options, service=Service(chromedriver))
        self.driver.set_page_load_timeout(30)
        # the viewport itself is 1280x800, whatever the window decorations take
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})

    def quit(self):
        self.driver.quit()

    def snapshot(self):
        """
        What the operator sees, read in one script run (so a self-refresh of
        the page cannot tear it): the summary, the node rows as shown text,
        the open operations, layout facts and any injected element.
        """
        return self.driver.execute_script("""
            const text = el => el ? el.innerText.trim() : null;
            const rows = sel => Array.from(document.querySelectorAll(sel + ' tbody tr'))
                .map(tr => Array.from(tr.cells).map(td => td.innerText.trim()));
            const summary = {};
            document.querySelectorAll('ul.summary li').forEach(li => {
                summary[li.id.replace('summary-', '')] = parseInt(text(li.querySelector('b')));
            });
            const nodes = document.querySelector('table.nodes');
            return {
                title: document.title,
                summary: summary,
                nodes: rows('table.nodes'),
                open_ops: rows('table.ops-open'),
                finished: rows('table.ops-finished'),
                injected: document.querySelectorAll('img, script:not(#live-rows), iframe')
                    .length,
                scroll_width: document.documentElement.scrollWidth,
                view_width: window.innerWidth,
                view_height: window.innerHeight,
                nodes_top: nodes ? nodes.getBoundingClientRect().top : null,
                summary_bottom: document.querySelector('ul.summary')
                    .getBoundingClientRect().bottom,
                next_href: (document.getElementById('page-next') || {}).href || null,
            };""")


class StatusPageInBrowserTests(SystemMixin, DatabaseMixin, unittest.TestCase):
    """An operator's first look at the page, in a real browser."""

    timeout = 120
    nodes = ("node1", "node2", "node3")

    def setUp(self):
        found = _binaries()
        if isinstance(found, str):
            raise unittest.SkipTest(found)
        super().setUp()
        self.binaries = found

    def add_legacy_node(self):
        """
        A node whose name holds markup.  The API refuses such names, but the
        page must not depend on that (an older version, a restore, a hand
        edit of the database), so it goes straight into PostgreSQL.
        """
        conn = psycopg2.connect(self.dsn)
        try:
            with conn, conn.cursor() as cur:
                cur.execute("INSERT INTO clusters (name) VALUES ('legacy')")
                cur.execute(
                    "INSERT INTO nodes (name, cluster, power, desired_state, power_state,"
                    " last_error) VALUES (%s, 'legacy', %s, 'on', 'unknown', %s)",
                    (HOSTILE_NODE, '{"mode": "single", "agents": [{"driver": "manual",'
                     ' "params": {"label": "x"}}]}', HOSTILE_REQUESTER))
        finally:
            conn.close()

    async def start_browser(self):
        """A browser signed in with the admin token, as an operator signs in."""
        browser = await threads.deferToThread(Browser, *self.binaries)
        self.addCleanup(threads.deferToThread, browser.quit)
        await threads.deferToThread(self.sign_in, browser)
        return browser

    def sign_in(self, browser):
        """The login form (blocking; call in a thread): the token, then the page."""
        browser.driver.get(self.api + "/login")
        field = browser.driver.find_element(By.NAME, "token")
        field.send_keys(self.token)
        field.submit()
        try:
            WebDriverWait(browser.driver, 20).until(
                lambda d: d.current_url.rstrip("/") == self.api.rstrip("/"))
        except Exception:
            raise AssertionError(f"not signed in: at {browser.driver.current_url}: "
                                 f"{browser.driver.page_source[:2000]}") from None

    def load(self, browser, path):
        """Load a page (blocking; call in a thread) and read it."""
        browser.driver.get(self.api + path)
        return browser.snapshot()

    def screenshot(self, browser):
        where = os.environ.get("POWERCTL_ARTIFACTS") or os.path.join(
            ROOT, "build", "test-artifacts")
        os.makedirs(where, exist_ok=True)
        browser.driver.save_screenshot(os.path.join(where, "status-page.png"))

    def filter_by_name(self, browser, text):
        """
        Type into the filter form and submit it, as an operator would; the
        page refreshes itself every few seconds, so a refresh landing
        between typing and submitting is simply tried again.
        """
        for _ in range(3):
            try:
                field = browser.driver.find_element(By.ID, "filter-name")
                field.clear()
                field.send_keys(text)
                field.submit()
                WebDriverWait(browser.driver, 15).until(
                    lambda d: f"name={text}" in d.current_url)
                return browser.snapshot()
            except WebDriverException:
                continue
        raise AssertionError("could not submit the filter form")
    async def test_what_an_operator_sees(self):
        await self.start_region()
        await self.start_pserv()
        for name in self.nodes:
            await self.add_node(name)
        self.add_legacy_node()
        op = await self.power("node1", "on")
        await self.wait_op(op["id"])
        # one operation that stays open: node3 on through a manual agent
        code, body = await self.call("PUT", "/v1/nodes/node3", {"power": {
            "mode": "single", "agents": [{"driver": "manual", "params": {"label": "r3"}}]}})
        self.assertEqual(code, 200, body)
        code, body = await self.call("POST", "/v1/nodes/node3/power", {
            "action": "on", "requester": HOSTILE_REQUESTER})
        self.assertEqual(code, 202, body)
        # The journal says who asked: the token's name.  Markup there (a
        # row from an older release) must still be shown as text.
        conn = psycopg2.connect(self.dsn)
        try:
            with conn, conn.cursor() as cur:
                cur.execute("UPDATE power_ops SET requester = %s WHERE id = %s",
                            (HOSTILE_REQUESTER, body["id"]))
        finally:
            conn.close()
        await wait_until(lambda: self.open_ops())

        browser = await self.start_browser()
        seen = await threads.deferToThread(self.load, browser, "/")

        nodes = {row[0]: row for row in seen["nodes"]}
        self.assertEqual(set(nodes), {"node1", "node2", "node3", HOSTILE_NODE})
        # name, cluster, desired, current
        self.assertEqual(nodes["node1"][1:4], ["c1", "on", "on"])
        self.assertEqual(nodes["node3"][2], "on")
        self.assertEqual(nodes[HOSTILE_NODE][1:4], ["legacy", "on", "unknown"])
        self.assertEqual(nodes[HOSTILE_NODE][5], HOSTILE_REQUESTER)  # its last error, as text
        self.assertEqual(seen["injected"], 0)  # the markup stayed text: no element made
        self.assertEqual(seen["title"], "powerctl region status")  # no script ran
        self.assertEqual(seen["summary"]["nodes"], 4)
        for state in ("on", "off", "unknown", "error"):  # the strip agrees with the table
            self.assertEqual(seen["summary"][f"state-{state}"],
                             sum(1 for row in seen["nodes"] if row[3] == state), state)
        self.assertEqual(seen["summary"]["ops-running"] + seen["summary"]["ops-waiting"], 1)
        [open_op] = seen["open_ops"]
        self.assertEqual(open_op[1:3], ["node3", "on"])
        self.assertEqual(open_op[5], HOSTILE_REQUESTER)
        self.assertIn(["node1", "on", "succeeded"],
                      [row[1:4] for row in seen["finished"]])
        # the layout: no sideways scrolling at 1280x800, nodes table above the fold
        self.assertEqual((seen["view_width"], seen["view_height"]), (1280, 800))
        self.assertLessEqual(seen["scroll_width"], seen["view_width"])
        self.assertLess(seen["summary_bottom"], seen["nodes_top"])
        self.assertLess(seen["nodes_top"], seen["view_height"])
        await threads.deferToThread(self.screenshot, browser)

        # filtering with the form, then paging
        seen = await threads.deferToThread(self.filter_by_name, browser, "node")
        self.assertEqual([row[0] for row in seen["nodes"]], ["node1", "node2", "node3"])
        seen = await threads.deferToThread(self.load, browser, "/?limit=2")
        self.assertEqual([row[0] for row in seen["nodes"]], [HOSTILE_NODE, "node1"])
        seen = await threads.deferToThread(self.load, browser, seen["next_href"].replace(
            self.api, ""))
        self.assertEqual([row[0] for row in seen["nodes"]], ["node2", "node3"])

        # a power request shows up without the page reloading: the rows
        # follow the event stream (a reload would drop the marker)
        await threads.deferToThread(self.load, browser, "/")

        def mark():
            WebDriverWait(browser.driver, 10, poll_frequency=0.1).until(
                lambda d: d.execute_script(
                    "return document.documentElement.getAttribute('data-live')") == "on")
            browser.driver.execute_script("window.powerctlMarker = 42;")

        await threads.deferToThread(mark)
        op = await self.power("node1", "off")
        await self.wait_op(op["id"])

        def node1_shown_off():
            WebDriverWait(browser.driver, 30, poll_frequency=0.2).until(
                lambda d: [["off", "off"]] == [
                    row[2:4] for row in browser.snapshot()["nodes"] if row[0] == "node1"])
            return browser.driver.execute_script(
                "return [window.powerctlMarker, document.querySelector("
                "'tr[data-node=\"node1\"]').getAttribute('data-seq')];")

        marker, seq = await threads.deferToThread(node1_shown_off)
        self.assertEqual(marker, 42)  # updated in place, not reloaded
        self.assertTrue(seq)  # by an event
