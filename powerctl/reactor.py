"""
The one reactor decision for the whole product: Twisted's asyncio reactor.

pysnmp 7 only has an asyncio API, so daemons, tests and the CLI all run
Twisted on top of an asyncio event loop.  Entry points call :func:`install`
before anything imports ``twisted.internet.reactor``; twistd plugins and the
test runners (``--reactor=asyncio``) choose the same reactor.
"""

import sys


def install():
    """
    Install the asyncio reactor unless it is already the installed one.

    Raises ``RuntimeError`` if some other reactor was installed first,
    because the SNMP driver would then fail much later and less clearly.
    """
    if "twisted.internet.reactor" in sys.modules:
        from twisted.internet import reactor
        from twisted.internet.asyncioreactor import AsyncioSelectorReactor

        if not isinstance(reactor, AsyncioSelectorReactor):
            raise RuntimeError(
                f"powerctl needs the asyncio reactor, but {type(reactor).__name__} "
                "is installed; run twistd/trial with --reactor=asyncio"
            )
        return reactor
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import reactor

    return reactor
