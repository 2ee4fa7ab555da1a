#!/usr/bin/env python3
"""Paired A/B of vpcnet ADD latency: builds compared call by call (issue 14).

    sudo python3 bench/add-ab.py [-n 100] [-r 3] [-p 1] LABEL=BIN_DIR[@STATE_PARENT][#SOCK_PARENT] ...

e.g.  python3 bench/add-ab.py before=/tmp/before-dist after=target/dist
      python3 bench/add-ab.py disk=target/dist tmpfs=target/dist@/dev/shm   (state on tmpfs)

One agent per LABEL (BIN_DIR/vpcnetd), each in a private host namespace of its own
(`vab<k>h`), N pod namespaces each; then N ADDs per label, alternating labels call by call
(the order flips every call), so whatever the machine does at that moment hits all alike. The
shared harness's alternation is per run, and this machine's speed moves by ±0.3 ms between
runs minutes apart: too coarse for the 50–100 µs changes this measures. Timed: spawn of
BIN_DIR/vpcnet (posix_spawn, from a thread in the host namespace) to its exit. The first two
ADDs of each round are not counted (warm-up). With -p P > 1, P ADDs start at once (a burst,
each timed from the burst's start, like the harness's parallel phase) and bursts alternate
between labels. Prints p50/p90 per label per round and over all
rounds. STATE_PARENT puts the agent's state directory there (default: beside the socket);
SOCK_PARENT the socket, the in-flight locks and the plugin log (default /tmp/vab). Nothing is
configured in the root namespace; namespaces and directories are removed at the end."""
import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import time

CLONE_NEWNET = 0x40000000


def main():
    ap = argparse.ArgumentParser(usage=__doc__)
    ap.add_argument("-n", type=int, default=100, help="ADDs per label per round (<= 100)")
    ap.add_argument("-r", type=int, default=3, help="rounds (fresh agents each)")
    ap.add_argument("-p", type=int, default=1,
                    help="ADDs started at once (a burst); bursts alternate between labels")
    ap.add_argument("specs", nargs="+")
    a = ap.parse_args()
    specs = []
    for k, s in enumerate(a.specs):
        label, _, rest = s.partition("=")
        rest, _, sock = rest.partition("#")
        bindir, _, state = rest.partition("@")
        sock = os.path.join(sock or "/tmp/vab", f"vab{k}")
        specs.append((label, os.path.abspath(bindir), state, sock))
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    root = os.open("/proc/self/ns/net", os.O_RDONLY)
    res = {s[0]: [] for s in specs}
    try:
        for rnd in range(a.r):
            cleanup(specs)
            agents, hosts = [], []
            try:
                for k, (label, bindir, state, sock) in enumerate(specs):
                    host = f"vab{k}h"
                    run("ip", "netns", "add", host)
                    run("ip", "-n", host, "link", "set", "lo", "up")
                    for i in range(a.n):
                        run("ip", "netns", "add", f"vab{k}p{i}")
                    os.makedirs(sock)
                    state_dir = os.path.join(state, f"vab{k}-{rnd}") if state else f"{sock}/state"
                    log = open(f"{sock}/agent.log", "w")
                    agents.append(subprocess.Popen(
                        ["ip", "netns", "exec", host, f"{bindir}/vpcnetd", "--socket", f"{sock}/a.sock",
                         "--state-dir", state_dir, "--vpc-cidr", "10.240.0.0/16", "--warm-ip-target", "64"],
                        stdout=log, stderr=subprocess.STDOUT))
                    with open(f"{sock}/conf.json", "w") as f:
                        f.write('{"cniVersion":"1.0.0","name":"vab","type":"vpcnet","mtu":1500,'
                                f'"socket":"{sock}/a.sock","logFile":"{sock}/plugin.log"}}')
                    hosts.append(os.open(f"/run/netns/{host}", os.O_RDONLY))
                for (_, _, _, sock) in specs:
                    for _ in range(100):
                        if os.path.exists(f"{sock}/a.sock"):
                            break
                        time.sleep(0.1)
                time.sleep(1.0)
                for b, first in enumerate(range(0, a.n, a.p)):
                    ids = list(range(first, min(first + a.p, a.n)))
                    order = range(len(specs)) if b % 2 == 0 else reversed(range(len(specs)))
                    for k in order:
                        label, bindir, _, sock = specs[k]
                        dts = burst(libc, hosts[k], root, bindir, sock, [(f"c{i}", f"vab{k}p{i}") for i in ids])
                        for i, dt in zip(ids, dts):
                            if dt is None:
                                print(f"{label}: ADD {i} failed", file=sys.stderr)
                            elif i >= 2 or a.p > 1:
                                res[label].append(dt)
            finally:
                for p in agents:
                    p.terminate()
                for p in agents:
                    p.wait()
                for fd in hosts:
                    os.close(fd)
            n = a.n - 2 if a.p == 1 else a.n
            print(f"round {rnd + 1}: " + " | ".join(
                f"{s[0]} {summary(res[s[0]][-n:])}" for s in specs)
                + f"  (load {open('/proc/loadavg').read().split()[0]})", flush=True)
        print("all rounds: " + " | ".join(f"{s[0]} {summary(res[s[0]])}" for s in specs))
    finally:
        cleanup(specs)


def burst(libc, host_fd, root_fd, bindir, sock, pods):
    """ADDs of `pods` ((container ID, pod namespace)...) all started at once, spawned from this
    thread while it is in the host namespace; per ADD, ms from the burst's start to its exit,
    or None if it failed."""
    # One open file per ADD: children sharing one would share its offset (one reads it all).
    fins = [os.open(f"{sock}/conf.json", os.O_RDONLY) for _ in pods]
    fout = os.open("/dev/null", os.O_WRONLY)
    pids = {}
    try:
        if libc.setns(host_fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns into the host namespace")
        try:
            t = time.perf_counter()
            for n, ((cid, pod_ns), fin) in enumerate(zip(pods, fins)):
                env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid,
                       "CNI_NETNS": f"/run/netns/{pod_ns}", "CNI_IFNAME": "eth0",
                       "CNI_PATH": bindir, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
                pid = os.posix_spawn(f"{bindir}/vpcnet", [f"{bindir}/vpcnet"], env,
                                     file_actions=[(os.POSIX_SPAWN_DUP2, fin, 0),
                                                   (os.POSIX_SPAWN_DUP2, fout, 1)])
                pids[pid] = n
            out = [None] * len(pods)
            while pids:
                pid, status = os.wait()
                n = pids.pop(pid, None)
                if n is not None and status == 0:
                    out[n] = (time.perf_counter() - t) * 1000
        finally:
            if libc.setns(root_fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        for fin in fins:
            os.close(fin)
        os.close(fout)
    return out


def summary(v):
    if not v:
        return "no samples"
    s = sorted(v)
    return f"p50 {statistics.median(s):.3f} p90 {s[int(len(s) * 0.9)]:.3f} ms (n={len(s)})"


def run(*cmd):
    subprocess.run(cmd, check=True)


def cleanup(specs):
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    for n in names:
        if n.startswith("vab") and n[3:4].isdigit():
            subprocess.run(["ip", "netns", "del", n], check=False)
    for (_, _, state, sock) in specs:
        shutil.rmtree(sock, ignore_errors=True)
        if state:
            for d in os.listdir(state) if os.path.isdir(state) else []:
                if d.startswith("vab"):
                    shutil.rmtree(os.path.join(state, d), ignore_errors=True)


if __name__ == "__main__":
    main()
