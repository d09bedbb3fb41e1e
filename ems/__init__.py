"""The ``ems`` command and the few helpers every package shares (YAML loading with clear errors).

Nothing in here knows about devices, tariffs or the controller; ``ems.cli`` wires the packages'
subcommands together and is the only module that imports all of them.
"""
