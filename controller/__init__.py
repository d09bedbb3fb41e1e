"""Acting: the asyncio service with its 1 s cycle, limits chain, planning task, modes, state and sinks."""
