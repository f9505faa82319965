#!/usr/bin/env bash
# `make test`'s phase marks: prints how long the phase that just ended took and how busy the cores were
# during it (from /proc/stat), so a CI log shows where the suite's time goes and which phases leave
# cores idle. State between calls lives in target/phase.state; `scripts/phase.sh start` resets it.
set -euo pipefail
cd "$(dirname "$0")/.."
state=target/phase.state
mkdir -p target
read -r _ u n s i w q sq st _ < /proc/stat
busy=$((u + n + s + q + sq + st)); total=$((busy + i + w)); now=$(date +%s)
if [ "${1:-}" != "start" ] && [ -f "$state" ]; then
  read -r t0 b0 tot0 < "$state"
  dt=$((total - tot0)); pct=0
  [ "$dt" -gt 0 ] && pct=$(( 100 * (busy - b0) / dt ))
  printf '>> phase %-40s %5d s, cores %3d%% busy (%d cores)\n' "${1:-?}" $((now - t0)) "$pct" "$(nproc)"
fi
echo "$now $busy $total" > "$state"
