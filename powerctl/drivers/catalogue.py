"""
The driver catalogue: driver names to driver types, built once and passed in.
"""

from powerctl.drivers.errors import UnknownDriver


class LazyType:
    """
    A driver type named now and built (its module imported) on first use.

    A pserv whose nodes are all Redfish never needs pysnmp nor pyghmi: their
    import is several MB of resident memory (issue 14), so the catalogue
    builds each type only when something first asks for it by name.
    """

    def __init__(self, name, build):
        self.name = name
        self._build = build

    def build(self):
        return self._build()


class DriverCatalogue:
    """
    Looks up driver types by name and builds bound drivers from raw
    parameters, validating them first so that bad input sends nothing.
    ``types`` are driver types or :class:`LazyType` (built by :meth:`get`).
    """

    def __init__(self, types):
        self._types = {t.name: t for t in types}

    @property
    def names(self):
        return sorted(self._types)

    def get(self, name):
        try:
            driver_type = self._types[name]
        except (KeyError, TypeError):
            raise UnknownDriver(name, self._types) from None
        if isinstance(driver_type, LazyType):
            driver_type = self._types[name] = driver_type.build()
        return driver_type

    def validate(self, name, params):
        """Validated, converted parameters for driver ``name`` (no I/O)."""
        return self.get(name).schema.validate(params)

    def build(self, name, params):
        """An :class:`IPowerDriver` for ``params`` (validated first)."""
        driver_type = self.get(name)
        return driver_type.bind(driver_type.schema.validate(params))

    def close(self):
        """
        Closes the driver types, one result each (a type never built holds
        nothing to close and is not built for it).
        """
        from twisted.internet import defer

        return defer.DeferredList(
            [defer.succeed(None) if isinstance(t, LazyType) else defer.maybeDeferred(t.close)
             for t in self._types.values()],
            consumeErrors=True,
        )
