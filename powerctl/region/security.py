"""
The region service's security wiring (issue 10), kept out of
:mod:`powerctl.region.service` so that it stays a few hooks: the API guard
over the region's pool, and the door in front of the status page and
``/metrics``.
"""

from powerctl.region import guard as _guard
from powerctl.region.tokens import TokenStore


def api_guard(pool, reactor, log=None):
    """The :class:`~powerctl.region.guard.ApiGuard` of a region."""
    return _guard.ApiGuard(TokenStore(pool), reactor, log=log)


def protect_web(root, guard, settings):
    """Tokens for the status page and ``/metrics`` (unless ``metrics_public``)."""
    return _guard.protect_web(root, guard,
                              metrics_public=getattr(settings, "metrics_public", False))
