"""
The driver catalogue: driver names to driver types, built once and passed in.
"""

from powerctl.drivers.errors import UnknownDriver


class DriverCatalogue:
    """
    Looks up driver types by name and builds bound drivers from raw
    parameters, validating them first so that bad input sends nothing.
    """

    def __init__(self, types):
        self._types = {t.name: t for t in types}

    @property
    def names(self):
        return sorted(self._types)

    def get(self, name):
        try:
            return self._types[name]
        except (KeyError, TypeError):
            raise UnknownDriver(name, self._types) from None

    def validate(self, name, params):
        """Validated, converted parameters for driver ``name`` (no I/O)."""
        return self.get(name).schema.validate(params)

    def build(self, name, params):
        """An :class:`IPowerDriver` for ``params`` (validated first)."""
        driver_type = self.get(name)
        return driver_type.bind(driver_type.schema.validate(params))

    def close(self):
        from twisted.internet import defer

        return defer.DeferredList(
            [defer.maybeDeferred(t.close) for t in self._types.values()],
            consumeErrors=True,
        )
