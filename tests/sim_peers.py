"""A running simulated site on free loopback ports, for tests (the controller's end-to-end tests too).

    async with simulated_site(speed=60) as site:          # the example site file, every device on its own port
        ep = site.endpoints["battery"]                      # Endpoint(host, port, unit_id)
        config = site.config                                # SimulatedSiteFile with the free ports filled in
        ... drivers / controller against ep, sharing site.clock ...

``site_config`` gives the configuration alone (e.g. to write a site file for a subprocess), with the
devices moved to free ports (devices sharing a port in the file still share one), optionally all behind
one port (several unit ids) or with other profiles.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from drivers.simulated.config import SimulatedSiteFile, load_site_file
from drivers.simulated.site import SimulatedSite
from ems.clock import AcceleratedClock, Clock
from tests.peers import free_port

EXAMPLE_SITE = Path(__file__).resolve().parent.parent / "deploy" / "examples" / "simulated-site.yaml"


def site_config(path: str | Path = EXAMPLE_SITE, *, shared_port: bool = False,
                profiles: Mapping[str, str] | None = None, simulation: Mapping[str, Any] | None = None,
                ) -> SimulatedSiteFile:
    """The site file at ``path`` with its devices on free 127.0.0.1 ports.

    ``shared_port`` puts every device behind one port with unit ids 1, 2, 3...; ``profiles`` replaces
    the profile of devices by name; ``simulation`` overrides fields of the ``simulation:`` section.
    """
    config = load_site_file(path)
    port = free_port()
    ports: dict[tuple[str, int], int] = {}  # devices that share a port in the file share one here too
    devices = []
    for i, d in enumerate(config.devices):
        own = ports.setdefault((d.endpoint.host, d.endpoint.port), free_port())
        endpoint = d.endpoint.model_copy(update={"host": "127.0.0.1", "port": port if shared_port else own})
        update: dict[str, Any] = {"endpoint": endpoint, "unit_id": i + 1 if shared_port else d.unit_id}
        if profiles and d.name in profiles:
            update["profile"] = profiles[d.name]
        devices.append(d.model_copy(update=update))
    sim = config.simulation
    if simulation:
        sim = type(sim).model_validate({**sim.model_dump(), **simulation})
    return config.model_copy(update={"devices": devices, "simulation": sim})


@asynccontextmanager
async def simulated_site(config: SimulatedSiteFile | None = None, *, speed: float = 1.0,
                         start: datetime | None = None, clock: Clock | None = None) -> AsyncIterator[SimulatedSite]:
    """A started :class:`SimulatedSite` (default: the example site on free ports), stopped on exit.

    The clock is ``clock`` if given, else an ``AcceleratedClock(speed, start or simulation.start)``;
    share ``site.clock`` with any controller under test.
    """
    config = config or site_config()
    site = SimulatedSite(config, clock=clock or AcceleratedClock(speed, start or config.simulation.start))
    await site.start()
    try:
        yield site
    finally:
        await site.stop()
