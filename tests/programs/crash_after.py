"""Prints a line, lives SECONDS, then exits with CODE (default 1). Usage: crash_after.py SECONDS [CODE]"""

import sys
import time

print(f"up, exiting in {sys.argv[1]} s", flush=True)
time.sleep(float(sys.argv[1]))
print("exiting now", flush=True)
sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
