"""
Test helpers for the API's tokens (issue 10): tests authenticate as a real
admin token; nothing turns authentication off.
"""

from twisted.internet import reactor
from twisted.web.http_headers import Headers

from powerctl.region.guard import ApiGuard
from powerctl.region.tokens import TokenStore

ADMIN = "test-admin"


def make_guard(pool, log=None, limiter=None):
    """The guard a region would build over ``pool``."""
    return ApiGuard(TokenStore(pool), reactor, log=log, limiter=limiter)


async def create(pool, name=ADMIN, role="admin", clusters=None):
    """A new token of ``role`` (the secret)."""
    _, token = await TokenStore(pool).create(name, role, clusters, created_by="tests")
    return token


class AuthClient:
    """A treq ``HTTPClient`` that sends ``Authorization: Bearer <token>`` with every request."""

    def __init__(self, client, token):
        self.client = client
        self.token = token

    def request(self, method, url, headers=None, **kwargs):
        if isinstance(headers, Headers):
            headers = dict(headers.getAllRawHeaders())
        headers = dict(headers or {})
        headers["Authorization"] = [f"Bearer {self.token}"]
        return self.client.request(method, url, headers=headers, **kwargs)

    def get(self, url, **kwargs):
        return self.request("GET", url, **kwargs)

    def post(self, url, **kwargs):
        return self.request("POST", url, **kwargs)

    def head(self, url, **kwargs):
        return self.request("HEAD", url, **kwargs)

    def put(self, url, **kwargs):
        return self.request("PUT", url, **kwargs)

    def delete(self, url, **kwargs):
        return self.request("DELETE", url, **kwargs)


#: A fixed Fernet key for the tests' stores (secrets sealed at rest).
TEST_KEY = b"dGVzdC1rZXktb2YtdGhlLXBvd2VyY3RsLXN1aXRlLi4="


def vault():
    """The vault of the tests' stores."""
    from powerctl.region.vault import Vault

    return Vault([TEST_KEY])
