#!/usr/bin/python3
"""A service CRIU cannot dump: it holds a connection to the D-Bus system bus.

The connection is a real client's (authenticated, with a bus name), so that
dbus-daemon keeps it however long the test takes to get to the upgrade; a
bare socket connection is dropped once the daemon's authentication timeout
passes.
"""

import asyncio

from dbus_fast import BusType
from dbus_fast.aio import MessageBus


async def main():
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    print(f"connected to the system bus as {bus.unique_name}", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
