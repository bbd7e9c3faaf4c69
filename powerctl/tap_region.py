"""twistd entry for ``powerctl-region`` (see :mod:`powerctl.tap`)."""

from powerctl.tap import RegionOptions as Options, make_region_service as makeService

__all__ = ["Options", "makeService"]
