#!/usr/bin/env bash
# Profiles the running game servers (`gaia gameserver` processes) with perf for SECONDS
# and prints, for each, where its CPU went: kernel against user space, and the hottest
# functions by their own time. Run it during a loadgen's steady phase, for example:
#
#   target/release/gaia loadgen --config examples/fleet-10k.yaml --bots 10000 --duration 60s &
#   sleep 50 && bench/profile-servers.sh 20
#
# Needs perf (Debian: linux-perf) and the rights to profile those processes (root, or
# kernel.perf_event_paranoid <= 1). Release builds keep line tables, so symbols resolve.
set -euo pipefail
secs=${1:-20}
out=${2:-target/profile}
top=${TOP:-25}
mkdir -p "$out"
pids=$(pgrep -f 'gaia gameserver' || true)
[ -n "$pids" ] || { echo "no gaia gameserver process is running" >&2; exit 1; }
for pid in $pids; do
    perf record -q -F 999 -p "$pid" -o "$out/$pid.data" -- sleep "$secs" 2>/dev/null &
done
wait
for pid in $pids; do
    report=$(perf report -i "$out/$pid.data" --stdio --no-children --sort dso,symbol 2>/dev/null | grep -v '^#' | grep -v '^$')
    kernel=$(awk '/\[k\]/ { sum += $1 } END { printf "%.1f", sum }' <<<"$report")
    echo "== game server pid $pid: ${kernel}% of its samples in the kernel (sockets, epoll, futex, scheduling)"
    head -n "$top" <<<"$report" | awk '{ $NF=""; print }' | sed 's/ *- *$//'
done
