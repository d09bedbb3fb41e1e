"""Modbus TCP server for the plant SCADA/BMS: a self-describing register map over the controller's state.

:mod:`controller.scada.registers` is the one definition of the map (the docs table is generated from
it); :mod:`controller.scada.server` serves it with pymodbus on the controller's event loop and turns
writes of the command block into commands on the shared remote-command intake. docs/integration.md.
"""
