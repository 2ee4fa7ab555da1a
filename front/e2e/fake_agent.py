#!/usr/bin/env python3
"""A fake vpcnetd exec socket for testing the front by hand (see run.sh).

Usage: fake_agent.py SOCKET MODE [COUNT]
  SOCKET  the agent socket path; listens on SOCKET.exec
  MODE    ok       answer code 0 and b'{"ok":1}\\n'
          code:N   answer code N and b'{"code":N}\\n'
          decline  answer code -1
          close    close without answering
          magic    answer b"NOPE" + code 0
  COUNT   connections to serve (default 1)
Every request is checked (magic, lengths, descriptors are network namespaces) and summarized
on stderr.
"""
import array
import os
import socket
import struct
import sys


def recv_exact(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError(f"EOF after {len(data)} of {n} bytes")
        data += chunk
    return data


def serve(conn, mode):
    fds = array.array("i")
    msg, anc, _flags, _addr = conn.recvmsg(16, socket.CMSG_SPACE(2 * fds.itemsize))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    msg += recv_exact(conn, 16 - len(msg))
    magic, flags, env_len, stdin_len = struct.unpack("<4sIII", msg)
    assert magic == b"VPX1", magic
    want = 2 if flags & 1 else 1
    assert len(fds) == want, (list(fds), flags)
    links = [os.readlink(f"/proc/self/fd/{fd}") for fd in fds]
    assert all(l.startswith("net:[") for l in links), links
    env = recv_exact(conn, env_len)
    stdin = recv_exact(conn, stdin_len)
    assert env.endswith(b"\0") or env_len == 0
    names = sorted(e.split(b"=", 1)[0].decode() for e in env.split(b"\0") if e)
    own = os.readlink("/proc/self/ns/net")
    print(
        f"fake-agent: flags={flags} fds={links} (own netns {own}) env_len={env_len} "
        f"vars={[n for n in names if n.startswith('CNI_')]} stdin={stdin!r}",
        file=sys.stderr,
        flush=True,
    )
    for fd in fds:
        os.close(fd)
    if mode == "ok":
        out = b'{"ok":1}\n'
        conn.sendall(b"VPXR" + struct.pack("<iI", 0, len(out)) + out)
    elif mode.startswith("code:"):
        code = int(mode[5:])
        out = b'{"code":%d}\n' % code
        conn.sendall(b"VPXR" + struct.pack("<iI", code, len(out)) + out)
    elif mode == "decline":
        conn.sendall(b"VPXR" + struct.pack("<iI", -1, 0))
    elif mode == "magic":
        conn.sendall(b"NOPE" + struct.pack("<iI", 0, 2) + b"x\n")
    elif mode == "short":
        # The agent dies while writing its answer: fewer bytes than announced.
        conn.sendall(b"VPXR" + struct.pack("<iI", 0, 100) + b'{"ok":')
    elif mode == "big":
        out = b"x" * 100000 + b"\n"
        conn.sendall(b"VPXR" + struct.pack("<iI", 0, len(out)) + out)
    elif mode == "close":
        pass
    else:
        raise SystemExit(f"unknown mode {mode}")


def main():
    path = sys.argv[1] + ".exec"
    mode = sys.argv[2]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(16)
    print("ready", flush=True)
    for _ in range(count):
        conn, _ = srv.accept()
        with conn:
            serve(conn, mode)
    srv.close()
    os.unlink(path)


if __name__ == "__main__":
    main()
