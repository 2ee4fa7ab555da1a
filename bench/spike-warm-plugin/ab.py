#!/usr/bin/env python3
"""SPIKE (issue 14 round 8): ADD through a warm plugin process vs the exec'd plugin, paired.
Run inside the agent's host namespace:  ip netns exec H python3 ab.py PLUGIN FORWARDER CONF NS_PREFIX N K GAP_MS
Odd pods: PLUGIN exec'd directly (today). Even pods: FORWARDER (no libc) handing the request
to one of K warm PLUGIN processes (VPCNET_SPIKE_LISTEN_FD), respawned as they finish."""
import os, socket, statistics, subprocess, sys, threading, time

plugin, fwd, conf, pfx = sys.argv[1:5]
n, k, gap = int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7]) / 1000
wdir = os.path.dirname(conf)
wsock = os.path.join(wdir, "workers.sock")
try: os.unlink(wsock)
except FileNotFoundError: pass
lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
lst.bind(wsock); lst.listen(64)
stop = False
def keep(slot):
    while not stop:
        p = subprocess.Popen([plugin], pass_fds=(lst.fileno(),), env={"VPCNET_SPIKE_LISTEN_FD": str(lst.fileno())},
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        p.wait()
threads = [threading.Thread(target=keep, args=(i,), daemon=True) for i in range(k)]
for t in threads: t.start()
time.sleep(0.5)
cfd = os.open(conf, os.O_RDONLY)
res = {"exec": [], "warm": []}
fails = 0
for i in range(1, 2 * n + 1):
    label = "exec" if (i % 2) ^ ((i // 2) % 2) else "warm"   # order flips every pair
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": f"c{i}", "CNI_NETNS": f"/run/netns/{pfx}{i}",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/x"}
    exe = plugin
    if label == "warm":
        env["VPCNET_SPIKE_WORKERS"] = wsock; exe = fwd
    out = os.open(os.path.join(wdir, f"out-{i}.json"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.lseek(cfd, 0, 0)
    t = time.perf_counter_ns()
    pid = os.posix_spawn(exe, [exe], env, file_actions=[(os.POSIX_SPAWN_DUP2, cfd, 0), (os.POSIX_SPAWN_DUP2, out, 1)])
    _, st = os.waitpid(pid, 0)
    dt = time.perf_counter_ns() - t
    os.close(out)
    ok = os.waitstatus_to_exitcode(st) == 0 and b'"ips"' in open(os.path.join(wdir, f"out-{i}.json"), "rb").read()
    if not ok: fails += 1
    if i > 4 and ok: res[label].append(dt / 1000)
    time.sleep(gap)
stop = True
for l, v in res.items():
    v.sort()
    print(f"{l:5s} n={len(v)} p50 {v[len(v)//2]:.0f} us  p90 {v[len(v)*9//10]:.0f} us  mean {statistics.mean(v):.0f} us")
print(f"failed calls: {fails}")
