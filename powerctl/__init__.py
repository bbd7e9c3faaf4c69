"""powerctl: an asynchronous, event-driven power controller for bare-metal fleets."""

__version__ = "0.1.0"
