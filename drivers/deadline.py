"""Deadlines for device operations that blame the device only for time the event loop was listening.

``asyncio.timeout`` counts wall time. When the event loop itself stands still (a planning solve
holding the GIL, a slow disk, an accelerated simulation on a busy machine), replies that arrived
meanwhile are only read once it runs again, and a plain timeout fires in the same loop iteration and
cancels the operation although the device answered in time. :func:`within` counts time in ticks of
:data:`TICK_S`: a tick that comes late counts as at most two ticks, so a stall of the loop is not
charged to the device, while a device that is slow while the loop runs fine misses its deadline on
time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

TICK_S = 0.02
"""How often a deadline looks at the clock. [s, physical time]"""


async def within(operation: Awaitable[T], budget_s: float) -> T:
    """The result of ``operation`` if it finishes within ``budget_s`` seconds of a running event loop.

    Otherwise the operation is cancelled (and awaited, so nothing of it runs on) and TimeoutError is
    raised. If the caller is cancelled, so is the operation.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(operation)
    left = budget_s
    try:
        while not task.done() and left > 0:
            wait = min(TICK_S, left)
            start = loop.time()
            await asyncio.wait({task}, timeout=wait)
            left -= min(loop.time() - start, wait + TICK_S)
    except BaseException:
        task.cancel()
        raise
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise TimeoutError(f"not done within {budget_s:g} s")
