"""The epics program's parts (clients/epics.py): Orbit on EPICS Channel Access.

`board.py` decides what is served as process variables (exported numbers with their units, time and alarm
severity, the run state and number, writable settings) and `imported.py` what is published of the channels
imported from other IOCs: both without I/O, times coming in. `caserver.py` serves the board with caproto's asyncio
server and `caclient.py` monitors the imported channels with caproto's asyncio client. None of them touches the
bus: the program does.
"""
