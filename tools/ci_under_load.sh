#!/usr/bin/env bash
# CI on a clean clone of this checkout's HEAD with N busy processes beside it, to see how CI fares
# on a shared machine. Prints CI's step times; ends the busy processes and the clone.
#
#   tools/ci_under_load.sh [N=7]                   # 7 busy processes + CI's own: load average about 10
#   tools/ci_under_load.sh --other-session [N=7]   # the busy processes in a session of their own
#
# By default the busy processes are started from this script's own session, so the scheduler shares
# the machine between them and CI's processes one by one: CI's share is its runnable processes'
# count over everyone's (the worst case). With autogroup scheduling (Linux's default on desktops,
# /proc/sys/kernel/sched_autogroup_enabled), load from another session, as another user's or
# another job's, takes one share for its whole session instead: --other-session.
set -euo pipefail
own_session=1
if [ "${1:-}" = "--other-session" ]; then
    own_session=0
    shift
fi
n="${1:-7}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
busy=()
cleanup() {
    if [ "$own_session" -eq 1 ]; then
        kill "${busy[@]}" 2>/dev/null || true
    else
        kill -- "-${busy[0]}" 2>/dev/null || true # the busy session's process group
    fi
    rm -rf "$work"
}
trap cleanup EXIT
if [ "$own_session" -eq 1 ]; then
    for _ in $(seq "$n"); do
        python3 -c "while True: pass" &
        busy+=("$!")
    done
else
    # (one process leads a new session, and its process group, then forks the others into them)
    python3 -c "
import os
os.setsid()
for _ in range($n - 1):
    if os.fork() == 0:
        break
while True:
    pass" &
    busy+=("$!")
fi
git clone -q "$repo" "$work/repo"
start=$SECONDS
status=0
(cd "$work/repo" && CI=true bash .ci/run) || status=$?
where=$([ "$own_session" -eq 1 ] && echo "in CI's session" || echo "in another session")
echo "CI ended with $status after $((SECONDS - start)) s beside $n busy processes $where (load average $(cut -d' ' -f1-3 /proc/loadavg))"
exit "$status"
