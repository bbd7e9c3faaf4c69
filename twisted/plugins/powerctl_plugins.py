"""twistd plugins: ``twistd powerctl-region`` and ``twistd powerctl-pserv``."""

from twisted.application.service import ServiceMaker

powerctl_region = ServiceMaker(
    "powerctl region",
    "powerctl.tap_region",
    "powerctl region: desired/current power state in PostgreSQL, REST API, AMP for pservs",
    "powerctl-region",
)

powerctl_pserv = ServiceMaker(
    "powerctl pserv",
    "powerctl.tap_pserv",
    "powerctl pserv: drives BMCs and PDUs for a region",
    "powerctl-pserv",
)
