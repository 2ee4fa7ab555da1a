#!/usr/bin/env bash
# End-to-end checks of the front by hand: the release binary beside a shell-script
# `vpcnet-standalone`, with no agent and with the fake agent (fake_agent.py).
# Usage: front/e2e/run.sh   (builds front/target/release/vpcnet first)
#        FRONT_BIN=target/front/release/vpcnet front/e2e/run.sh   (that build; scripts/test.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ -z "${FRONT_BIN:-}" ]; then
  cargo build --release --quiet --manifest-path "$here/../Cargo.toml"
  FRONT_BIN=$here/../target/release/vpcnet
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cp "$FRONT_BIN" "$dir/vpcnet"
cat >"$dir/vpcnet-standalone" <<'SH'
#!/bin/sh
echo "standalone: $*"
echo "stdin: [$(cat)]"
env | grep '^CNI_' | sort
grep '^SigIgn' /proc/self/status
exit 3
SH
chmod +x "$dir/vpcnet-standalone"
sock="$dir/vpcnetd.sock"
conf="{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"type\":\"vpcnet\",\"socket\":\"$sock\",\"x\":{\"socket\":\"/no\"}}"
fails=0

# check NAME WANT_RC WANT_SUBSTRING OUTPUT RC
check() {
  if [[ $5 == "$2" && $4 == *"$3"* ]]; then
    echo "ok   $1"
  else
    echo "FAIL $1: rc=$5 (want $2), output:"; echo "$4" | sed 's/^/     /'
    fails=$((fails + 1))
  fi
}

# run_front ENV... -- ARGS...  (stdin: $conf)
run_front() {
  local rc=0 out
  out=$(env "$@" <<<"$conf" 2>&1) || rc=$?
  printf '%s\n%s' "$rc" "$out"
}

with_agent() { # MODE, then the command line
  local mode=$1; shift
  rm -f "$sock.exec"
  timeout 20 python3 "$here/fake_agent.py" "$sock" "$mode" >/dev/null 2>"$dir/agent.log" &
  local pid=$!
  for _ in $(seq 500); do [[ -S $sock.exec ]] && break; sleep 0.02; done
  local r; r=$("$@")
  wait "$pid" || echo "(fake agent failed: $(cat "$dir/agent.log"))" >&2
  # Every case with the agent must have reached it.
  grep -q '^fake-agent: ' "$dir/agent.log" || r="${r}
(the fake agent saw no request)"
  printf '%s' "$r"
}

split() { rc=${1%%$'\n'*}; out=${1#*$'\n'}; }

split "$(run_front CNI_COMMAND=ADD CNI_NETNS=/proc/self/ns/net "$dir/vpcnet" a b)"
check "no agent: standalone with replayed stdin, argv, env, exit 3" 3 "standalone: a b
stdin: [$conf]
CNI_COMMAND=ADD" "$out" "$rc"
check "no agent: SIGPIPE disposition restored (not ignored)" 3 "SigIgn:	0000000000000000" "$out" "$rc"

split "$(run_front CNI_COMMAND=VERSION "$dir/vpcnet" v)"
check "VERSION: standalone at once" 3 "standalone: v" "$out" "$rc"
split "$(run_front "$dir/vpcnet")"
check "no CNI_COMMAND: standalone" 3 "standalone:" "$out" "$rc"

split "$(with_agent ok run_front CNI_COMMAND=ADD CNI_NETNS=/proc/self/ns/net "$dir/vpcnet" a)"
check "agent ok: prints its output, exit 0" 0 '{"ok":1}' "$out" "$rc"
cat "$dir/agent.log"
grep -q "flags=1 fds=\['net:\[.*', 'net:\[.*'\].*stdin=b'{\"cniVersion\"" "$dir/agent.log" &&
  echo "ok   agent got both netns fds and the stdin" || { echo "FAIL two fds"; fails=$((fails + 1)); }
split "$(with_agent ok run_front CNI_COMMAND=DEL "$dir/vpcnet")"
check "agent ok without CNI_NETNS: one fd" 0 '{"ok":1}' "$out" "$rc"
grep -q "flags=0 fds=\['net:\[[0-9]*\]'\] .*stdin=b'{" "$dir/agent.log" && echo "ok   flags=0 with one fd" || { echo "FAIL flags=0"; fails=$((fails + 1)); }
split "$(with_agent ok run_front CNI_COMMAND=DEL CNI_NETNS=/nonexistent "$dir/vpcnet")"
check "CNI_NETNS that does not open: one fd" 0 '{"ok":1}' "$out" "$rc"
split "$(with_agent code:7 run_front CNI_COMMAND=CHECK "$dir/vpcnet")"
check "agent code 7" 7 '{"code":7}' "$out" "$rc"
split "$(with_agent code:256 run_front CNI_COMMAND=GC "$dir/vpcnet")"
check "agent code 256: declined" 3 "stdin: [$conf]" "$out" "$rc"
split "$(with_agent decline run_front CNI_COMMAND=STATUS "$dir/vpcnet" s)"
check "agent declines: standalone with stdin" 3 "standalone: s
stdin: [$conf]" "$out" "$rc"
split "$(with_agent close run_front CNI_COMMAND=ADD "$dir/vpcnet")"
check "agent closes: standalone with stdin" 3 "stdin: [$conf]" "$out" "$rc"
split "$(with_agent magic run_front CNI_COMMAND=ADD "$dir/vpcnet")"
check "wrong magic: standalone with stdin" 3 "stdin: [$conf]" "$out" "$rc"
split "$(with_agent short run_front CNI_COMMAND=ADD "$dir/vpcnet")"
check "answer cut short: standalone with stdin, nothing of it printed" 3 "stdin: [$conf]" "$out" "$rc"
if [[ $out == *'{"ok":'* ]]; then echo "FAIL answer cut short: part of it printed"; fails=$((fails + 1)); fi
split "$(with_agent big run_front CNI_COMMAND=ADD "$dir/vpcnet")"
check "output larger than the buffer: copied whole" 0 "xxxxxxxxxx" "$out" "$rc"
if [ "${#out}" -lt 100000 ]; then echo "FAIL big output: ${#out} bytes"; fails=$((fails + 1)); fi

mkdir "$dir/lone"
cp "$dir/vpcnet" "$dir/lone/vpcnet"
split "$(run_front CNI_COMMAND=ADD "$dir/lone/vpcnet")"
check "no standalone: CNI error 999, exit 1" 1 "{\"cniVersion\":\"1.0.0\",\"code\":999,\"msg\":\"vpcnet: cannot run $dir/lone/vpcnet-standalone: errno 2\"}" "$out" "$rc"
split "$(run_front CNI_COMMAND=ADD VPCNET_FRONT_STANDALONE="$dir/vpcnet-standalone" "$dir/lone/vpcnet" o)"
check "VPCNET_FRONT_STANDALONE" 3 "standalone: o" "$out" "$rc"

if ((fails)); then echo "$fails failed"; exit 1; fi
echo "all passed"
