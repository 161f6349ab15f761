#!/usr/bin/env bash
# CI on a clean clone of this checkout's HEAD with N busy processes beside it, to see how CI fares
# on a shared machine. The busy processes are started from this script's own session, so they
# compete with CI process for process (with autogroup scheduling, load from other sessions takes a
# whole group's share instead). Prints CI's step times; ends the busy processes and the clone.
#
#   tools/ci_under_load.sh [N=7]     # 7 busy processes + CI's own: load average about 10 on 2 cores
set -euo pipefail
n="${1:-7}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
busy=()
cleanup() { kill "${busy[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq "$n"); do
    python3 -c "while True: pass" &
    busy+=("$!")
done
git clone -q "$repo" "$work/repo"
start=$SECONDS
status=0
(cd "$work/repo" && CI=true bash .ci/run) || status=$?
echo "CI ended with $status after $((SECONDS - start)) s beside $n busy processes (load average $(cut -d' ' -f1-3 /proc/loadavg))"
exit "$status"
