#!/usr/bin/env python3
"""Spawn-to-exit of executables, interleaved (issue 14: the plugin's start-up cost).

    python3 bench/spawn-cost.py [-n 1500] EXE...     e.g. /bin/true target/dist/vpcnet

Each EXE runs with only CNI_COMMAND=VERSION in its environment and stdout on /dev/null
(a CNI plugin prints its version and exits); one spawn of each per round, so the machine's
drift hits all alike. Prints p50 and p10 per executable."""
import os
import statistics
import sys
import time

args = sys.argv[1:]
n = 1500
if args[:1] == ["-n"]:
    n, args = int(args[1]), args[2:]
if not args:
    sys.exit(__doc__)
res = {b: [] for b in args}
devnull = os.open("/dev/null", os.O_WRONLY)
for _ in range(n):
    for b in args:
        t = time.perf_counter_ns()
        pid = os.posix_spawn(b, [b], {"CNI_COMMAND": "VERSION"},
                             file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 1)])
        os.waitpid(pid, 0)
        res[b].append(time.perf_counter_ns() - t)
for b in args:
    v = res[b]
    print(f"{b:40s} p50 {statistics.median(v) / 1000:7.1f} us  p10 {statistics.quantiles(v, n=10)[0] / 1000:7.1f} us")
