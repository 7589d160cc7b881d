"""`python -m runcontrol.keys`: CURVE key pairs for an experiment, kept under the name operators type.

The code lives in `runcontrol.bus.keys`.
"""

import sys

from runcontrol.bus.keys import main

if __name__ == "__main__":
    sys.exit(main())
