"""
twistd plugins: ``twistd powerctl-region`` and ``twistd powerctl-pserv``.

One ``IServiceMaker`` per daemon.  twistd imports every plugin file to list
the commands it offers, so this one imports nothing of powerctl at module
level: the options (:mod:`powerctl.tap`) and the service modules are loaded
only when the daemon is chosen, and ``twistd --help`` stays cheap.
"""

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IServiceMaker)
class RegionMaker:
    """``twistd powerctl-region``."""

    tapname = "powerctl-region"
    description = ("powerctl region: desired/current power state in PostgreSQL, "
                   "REST API, AMP for pservs")

    @property
    def options(self):
        from powerctl.tap import RegionOptions

        return RegionOptions

    def makeService(self, options):
        from powerctl.tap import make_region_service

        return make_region_service(options)


@implementer(IPlugin, IServiceMaker)
class PservMaker:
    """``twistd powerctl-pserv``."""

    tapname = "powerctl-pserv"
    description = "powerctl pserv: drives BMCs and PDUs for a region"

    @property
    def options(self):
        from powerctl.tap import PservOptions

        return PservOptions

    def makeService(self, options):
        from powerctl.tap import make_pserv_service

        return make_pserv_service(options)


powerctl_region = RegionMaker()
powerctl_pserv = PservMaker()
