"""
Power drivers: the driver interface, the error taxonomy, settings schemas,
the verifying base class and the standard driver types (``ipmi``, ``snmp``,
``redfish``, ``webhook``, ``manual``).

Importing this package imports nothing else: the driver modules pull in
pyghmi, pysnmp and treq, and must only be loaded once an entry point has
installed the asyncio reactor (see :mod:`powerctl.drivers.standard`).
"""
