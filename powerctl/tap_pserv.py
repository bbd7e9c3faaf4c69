"""twistd entry for ``powerctl-pserv`` (see :mod:`powerctl.tap`)."""

from powerctl.tap import PservOptions as Options, make_pserv_service as makeService

__all__ = ["Options", "makeService"]
