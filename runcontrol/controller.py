"""`python -m runcontrol.controller`: the run controller, kept under the name operators type.

The code lives in `runcontrol.control.controller`.
"""

import sys

from runcontrol.control.controller import main

if __name__ == "__main__":
    sys.exit(main())
