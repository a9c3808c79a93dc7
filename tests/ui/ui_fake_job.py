"""A stand-in job program for the runner tests (no torch import, starts in milliseconds).

    ui_fake_job.py count N FILE      print a tqdm-like bar to N (carriage returns), write FILE, exit 0
    ui_fake_job.py fail CODE         print a line, exit CODE
    ui_fake_job.py sleep PIDFILE     start a grandchild that sleeps; write both pids to PIDFILE; sleep
    ui_fake_job.py stubborn PIDFILE  ignore SIGTERM, write the pid, sleep (needs SIGKILL)
"""

import os
import signal
import subprocess
import sys
import time

mode = sys.argv[1]
if mode == "count":
    n, target = int(sys.argv[2]), sys.argv[3]
    print("starting count", flush=True)
    for i in range(n + 1):
        sys.stderr.write(f"\rcount: {100 * i // n:3d}%|####| {i}/{n} [00:0{i}<00:00, 1.00it/s]")
        sys.stderr.flush()
        time.sleep(0.02)
    sys.stderr.write("\n")
    with open(target, "w") as fh:
        fh.write("done\n")
    print(f"wrote {target} ✓", flush=True)
elif mode == "fail":
    print("about to fail", flush=True)
    sys.exit(int(sys.argv[2]))
elif mode == "sleep":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(sys.argv[2], "w") as fh:
        fh.write(f"{os.getpid()} {child.pid}\n")
    print("sleeping", flush=True)
    time.sleep(600)
elif mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(sys.argv[2], "w") as fh:
        fh.write(f"{os.getpid()}\n")
    print("ignoring SIGTERM", flush=True)
    time.sleep(600)
