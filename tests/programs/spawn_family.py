"""Starts a child in its own process group and a grandchild in a new session, writes their pids, then lives.

Usage: spawn_family.py PIDS_FILE [exit]   (with `exit`, it exits at once, leaving them orphaned)
"""

import os
import subprocess
import sys
import time

child = subprocess.Popen(["sleep", "600"])
daemon = subprocess.Popen(["sleep", "600"], start_new_session=True)
with open(sys.argv[1] + ".tmp", "w") as out:
    out.write(f"{child.pid} {daemon.pid}\n")
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
print(f"child {child.pid}, daemon {daemon.pid}", flush=True)
if sys.argv[2:] == ["exit"]:
    os._exit(3)
while True:
    time.sleep(60)
