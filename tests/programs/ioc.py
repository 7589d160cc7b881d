"""A facility's IOC, for tests: a caproto server whose process variables change, on loopback only.

Usage: ioc.py PREFIX PORT BEACON_PORT [--start 100]
Serves PREFIX:T1, a temperature in K that rises by 0.5 every 0.2 s from --start, and PREFIX:MODE, an enum
that stays "idle"; on 127.0.0.1, port PORT (searches, and the TCP port tried first), beacons to
127.0.0.1:BEACON_PORT. Runs until killed.
"""

import argparse
import os


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("prefix")
    parser.add_argument("port", type=int)
    parser.add_argument("beacon_port", type=int)
    parser.add_argument("--start", type=float, default=100.0)
    args = parser.parse_args()
    os.environ.update({"EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1", "EPICS_CA_SERVER_PORT": str(args.port),
                       "EPICS_CAS_SERVER_PORT": str(args.port), "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
                       "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1", "EPICS_CAS_BEACON_PORT": str(args.beacon_port)})
    from caproto import ChannelType
    from caproto.server import PVGroup, pvproperty, run

    class Facility(PVGroup):
        t1 = pvproperty(name="T1", value=args.start, units="K", precision=2, read_only=True)
        mode = pvproperty(name="MODE", value="idle", enum_strings=["idle", "busy"], dtype=ChannelType.ENUM,
                          read_only=True)

        @t1.scan(period=0.2)
        async def t1(self, instance, async_lib):
            await instance.write(instance.value + 0.5)

    run(Facility(prefix=args.prefix).pvdb, interfaces=["127.0.0.1"])


if __name__ == "__main__":
    main()
