"""`python -m runcontrol.server`: the central server, kept under the name operators type.

The code lives in `runcontrol.bus.server`.
"""

import sys

from runcontrol.bus.server import main

if __name__ == "__main__":
    sys.exit(main())
