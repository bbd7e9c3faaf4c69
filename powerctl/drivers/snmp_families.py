"""
The PDU families the ``snmp`` driver knows: pure data, no code per vendor.

Each :class:`Family` says where an outlet's state is read, which SET turns
it on, off or (when the PDU can) reboots it, and how an outlet number maps
to the table index.  The driver and the simulator both read this table, so
adding a vendor is adding one entry here.

Index schemes
-------------
An instance OID is ``column + index``.  ``outlet`` is the 1-based outlet
number printed on the PDU; ``unit`` (default 1) picks a PDU in a
daisy-chain or a module of a modular PDU.  :class:`IndexScheme` builds the
index:

* ``outlet`` alone (APC, CyberPower, Vertiv/Geist V5): ``column.outlet``;
  such families accept only ``unit=1``.
* ``unit.outlet`` (Raritan ``pduId.outletId``, BayTech ``module.outlet``):
  ``unit + 0``.
* Eaton ``strappingIndex.outletIndex``: the strapping index of the first
  (master) unit is 0, so it is ``unit - 1``.
* ServerTech ``tower.infeed.outlet`` (Sentry3) and ``unit.inputCord.outlet``
  (Sentry4): the middle part is the first infeed / input cord (1), which is
  where every outlet of a single-cord PDU lives.

Sources (the MIB objects, read from the vendors' MIB files as compiled in
public pysnmp MIB collections and from NUT's SNMP subdrivers; OIDs are
written out numerically so no MIB has to be loaded at run time):

* PowerNet-MIB (APC): ``rPDUOutletStatusOutletState``,
  ``rPDUOutletControlOutletCommand``, ``sPDUOutletCtl``.
* PDU2-MIB (Raritan PX2/PX3): ``outletSwitchingState`` (a
  SensorStateEnumeration: on(7), off(8)), ``switchingOperation``.
* EATON-EPDU-MIB: ``outletControlStatus``, ``outletControlOffCmd`` (column
  3) and ``outletControlOnCmd`` (column 4).  These are *delays*, not
  enumerations: writing 0 acts immediately, a positive value after that many
  seconds, -1 cancels.  A widely copied table lists column 3 as "on"; the MIB
  says column 3 is ``outletControlOffCmd``.
* Sentry3-MIB: ``outletStatus``, ``outletControlAction``.
* Sentry4-MIB: ``st4OutletState`` (DeviceState: unknown(0), on(1), off(2)),
  ``st4OutletControlAction``.
* CPS-MIB (CyberPower): ``ePDUOutletStatusOutletState``,
  ``ePDUOutletControlOutletCommand``.
* BayTech sBTA MIB (enterprise 4779) as used by NUT's ``baytech-mib.c``: one
  read-write outlet state column, 0 = off, 1 = on; no reboot value.
* VERTIV-V5-MIB (the renamed GEIST-V5-MIB): ``pduOutletSwitchState``,
  ``pduOutletSwitchControl`` (on(2), off(4), reboot(6)); the compiled MIB
  indexes the table by ``pduOutletSwitchIndex`` alone.
"""

import attrs

from powerctl.power import PowerState


def _oid(text):
    """A dotted OID string as a tuple of ints (the table stays readable)."""
    return tuple(int(part) for part in text.strip(".").split("."))


@attrs.frozen
class IndexScheme:
    """
    How ``(unit, outlet)`` becomes the table index after the column OID.

    ``unit_offset`` is None when the table has no unit component (then only
    unit 1 exists); otherwise the unit part is ``unit + unit_offset``.
    ``middle`` are fixed parts between unit and outlet (an infeed or cord).
    """

    unit_offset: int | None = None
    middle: tuple = ()

    @property
    def has_unit(self):
        return self.unit_offset is not None

    def index(self, unit, outlet):
        """The index tuple of one outlet; ValueError if ``unit`` cannot exist."""
        if not self.has_unit:
            if unit != 1:
                raise ValueError("this PDU family has no units; unit must be 1")
            return (outlet,)
        return (unit + self.unit_offset, *self.middle, outlet)

    def prefix(self, unit):
        """The index parts before the outlet number (for walks)."""
        return self.index(unit, 0)[:-1]


@attrs.frozen
class Command:
    """One SET that performs an action: write ``value`` to ``oid.index``."""

    oid: tuple
    value: int
    object: str


@attrs.frozen
class Family:
    """One PDU family: status column, the SETs for on/off/reboot, the index."""

    name: str
    description: str
    mib: str
    status_oid: tuple
    status_object: str
    #: ((raw value, PowerState), ...); any other value reads as UNKNOWN
    #: (transitional or error states), so verification keeps polling.
    status_values: tuple
    on: Command
    off: Command
    reboot: Command | None
    index: IndexScheme = IndexScheme()

    def state_of(self, raw):
        """
        The :class:`PowerState` a raw status integer stands for (UNKNOWN for
        anything else, a value of another type included).
        """
        try:
            raw = int(raw)
        except (TypeError, ValueError):
            return PowerState.UNKNOWN
        for known, state in self.status_values:
            if known == raw:
                return state
        return PowerState.UNKNOWN

    def raw_of(self, state):
        """The raw status integer for ON or OFF (used by simulators)."""
        for raw, known in self.status_values:
            if known == state:
                return raw
        raise KeyError(state)

    def status_instance(self, unit, outlet):
        return self.status_oid + self.index.index(unit, outlet)

    def command_instance(self, command, unit, outlet):
        return command.oid + self.index.index(unit, outlet)

    def outlet_of(self, oid, unit):
        """The outlet number of a status instance OID, or None if not ours."""
        head = self.status_oid + self.index.prefix(unit)
        oid = tuple(oid)
        if len(oid) != len(head) + 1 or oid[: len(head)] != head:
            return None
        return oid[-1]


_APC_CTRL = _oid("1.3.6.1.4.1.318.1.1.12.3.3.1.1.4")
_MS_CTL = _oid("1.3.6.1.4.1.318.1.1.4.4.2.1.3")
_RARITAN_OP = _oid("1.3.6.1.4.1.13742.6.4.1.2.1.2")
_EATON = "1.3.6.1.4.1.534.6.6.7.6.6.1."
_SENTRY3_ACTION = _oid("1.3.6.1.4.1.1718.3.2.3.1.11")
_SENTRY4_ACTION = _oid("1.3.6.1.4.1.1718.4.1.8.5.1.2")
_CPS_CTRL = _oid("1.3.6.1.4.1.3808.1.1.3.3.3.1.1.4")
_BAYTECH = _oid("1.3.6.1.4.1.4779.1.3.5.3.1.3")
_VERTIV_CTRL = _oid("1.3.6.1.4.1.21239.5.2.3.5.1.6")

ON, OFF = PowerState.ON, PowerState.OFF

FAMILIES = (
    Family(
        name="apc-rpdu",
        description="APC Switched Rack PDU (AP79xx, AP86xx, AP89xx)",
        mib="PowerNet-MIB",
        # rPDUOutletStatusOutletState: outletStatusOn(1), outletStatusOff(2)
        status_oid=_oid("1.3.6.1.4.1.318.1.1.12.3.5.1.1.4"),
        status_object="rPDUOutletStatusOutletState",
        status_values=((1, ON), (2, OFF)),
        # rPDUOutletControlOutletCommand: immediateOn(1), immediateOff(2),
        # immediateReboot(3)
        on=Command(_APC_CTRL, 1, "rPDUOutletControlOutletCommand"),
        off=Command(_APC_CTRL, 2, "rPDUOutletControlOutletCommand"),
        reboot=Command(_APC_CTRL, 3, "rPDUOutletControlOutletCommand"),
    ),
    Family(
        name="apc-masterswitch",
        description="APC MasterSwitch (AP92xx, AP96xx); also older rPDU firmware",
        mib="PowerNet-MIB",
        # sPDUOutletCtl reads outletOn(1)/outletOff(2) and takes the commands
        status_oid=_MS_CTL,
        status_object="sPDUOutletCtl",
        status_values=((1, ON), (2, OFF)),
        on=Command(_MS_CTL, 1, "sPDUOutletCtl"),
        off=Command(_MS_CTL, 2, "sPDUOutletCtl"),
        reboot=Command(_MS_CTL, 3, "sPDUOutletCtl"),
    ),
    Family(
        name="raritan-px2",
        description="Raritan PX2/PX3 (PDU2-MIB); unit = pduId",
        mib="PDU2-MIB",
        # outletSwitchingState (SensorStateEnumeration): on(7), off(8)
        status_oid=_oid("1.3.6.1.4.1.13742.6.4.1.2.1.3"),
        status_object="outletSwitchingState",
        status_values=((7, ON), (8, OFF)),
        # switchingOperation: off(0), on(1), cycle(2)
        on=Command(_RARITAN_OP, 1, "switchingOperation"),
        off=Command(_RARITAN_OP, 0, "switchingOperation"),
        reboot=Command(_RARITAN_OP, 2, "switchingOperation"),
        index=IndexScheme(unit_offset=0),
    ),
    Family(
        name="eaton-epdu",
        description="Eaton G3 ePDU (EATON-EPDU-MIB); unit 1 = strappingIndex 0",
        mib="EATON-EPDU-MIB",
        # outletControlStatus: off(0), on(1), pendingOff(2), pendingOn(3)
        status_oid=_oid(_EATON + "2"),
        status_object="outletControlStatus",
        status_values=((1, ON), (0, OFF)),
        # Separate delay-valued commands: 0 = now (see module docstring)
        on=Command(_oid(_EATON + "4"), 0, "outletControlOnCmd"),
        off=Command(_oid(_EATON + "3"), 0, "outletControlOffCmd"),
        reboot=Command(_oid(_EATON + "5"), 0, "outletControlRebootCmd"),
        index=IndexScheme(unit_offset=-1),
    ),
    Family(
        name="servertech-sentry3",
        description="ServerTech Sentry CDU (Sentry3-MIB); index tower.infeed(1).outlet",
        mib="Sentry3-MIB",
        # outletStatus: off(0), on(1), offWait(2), onWait(3), ... errors
        status_oid=_oid("1.3.6.1.4.1.1718.3.2.3.1.5"),
        status_object="outletStatus",
        status_values=((1, ON), (0, OFF)),
        # outletControlAction: none(0), on(1), off(2), reboot(3)
        on=Command(_SENTRY3_ACTION, 1, "outletControlAction"),
        off=Command(_SENTRY3_ACTION, 2, "outletControlAction"),
        reboot=Command(_SENTRY3_ACTION, 3, "outletControlAction"),
        index=IndexScheme(unit_offset=0, middle=(1,)),
    ),
    Family(
        name="servertech-sentry4",
        description="ServerTech PRO1/PRO2 (Sentry4-MIB); index unit.cord(1).outlet",
        mib="Sentry4-MIB",
        # st4OutletState (DeviceState): unknown(0), on(1), off(2)
        status_oid=_oid("1.3.6.1.4.1.1718.4.1.8.3.1.1"),
        status_object="st4OutletState",
        status_values=((1, ON), (2, OFF)),
        # st4OutletControlAction: none(0), on(1), off(2), reboot(3), queue...
        on=Command(_SENTRY4_ACTION, 1, "st4OutletControlAction"),
        off=Command(_SENTRY4_ACTION, 2, "st4OutletControlAction"),
        reboot=Command(_SENTRY4_ACTION, 3, "st4OutletControlAction"),
        index=IndexScheme(unit_offset=0, middle=(1,)),
    ),
    Family(
        name="cyberpower",
        description="CyberPower switched ePDU (CPS-MIB)",
        mib="CPS-MIB",
        # ePDUOutletStatusOutletState: outletStatusOn(1), outletStatusOff(2)
        status_oid=_oid("1.3.6.1.4.1.3808.1.1.3.3.5.1.1.4"),
        status_object="ePDUOutletStatusOutletState",
        status_values=((1, ON), (2, OFF)),
        # ePDUOutletControlOutletCommand: immediateOn(1), immediateOff(2),
        # immediateReboot(3)
        on=Command(_CPS_CTRL, 1, "ePDUOutletControlOutletCommand"),
        off=Command(_CPS_CTRL, 2, "ePDUOutletControlOutletCommand"),
        reboot=Command(_CPS_CTRL, 3, "ePDUOutletControlOutletCommand"),
    ),
    Family(
        name="baytech-mrp",
        description="BayTech RPC/MRP (sBTA MIB); unit = module",
        mib="BayTech sBTA MIB (enterprise 4779)",
        # outlet state column, read-write: off(0), on(1)
        status_oid=_BAYTECH,
        status_object="sBTA outlet state (…4779.1.3.5.3.1.3)",
        status_values=((1, ON), (0, OFF)),
        on=Command(_BAYTECH, 1, "sBTA outlet state"),
        off=Command(_BAYTECH, 0, "sBTA outlet state"),
        reboot=None,
        index=IndexScheme(unit_offset=0),
    ),
    Family(
        name="vertiv-geist",
        description="Vertiv Geist rPDU, firmware 5 (VERTIV-V5-MIB / GEIST-V5-MIB)",
        mib="VERTIV-V5-MIB",
        # pduOutletSwitchState: on(1), off(2), on2off(3), off2on(4),
        # rebootOn(5), rebootOff(6), unavailable(7)
        status_oid=_oid("1.3.6.1.4.1.21239.5.2.3.5.1.4"),
        status_object="pduOutletSwitchState",
        status_values=((1, ON), (2, OFF)),
        # pduOutletSwitchControl: cancel(1), on(2), onAfterDelay(3), off(4),
        # offAfterDelay(5), reboot(6), rebootAfterDelay(7), none(8)
        on=Command(_VERTIV_CTRL, 2, "pduOutletSwitchControl"),
        off=Command(_VERTIV_CTRL, 4, "pduOutletSwitchControl"),
        reboot=Command(_VERTIV_CTRL, 6, "pduOutletSwitchControl"),
    ),
)

BY_NAME = {f.name: f for f in FAMILIES}
NAMES = tuple(f.name for f in FAMILIES)


def get(name):
    """The :class:`Family` called ``name``; KeyError naming the known ones."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown PDU family {name!r}; known: {', '.join(NAMES)}") from None
