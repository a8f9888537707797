#!/usr/bin/env bash
# Benchmark (not a test): managed mode against RELOAD mode, in the same run
# on the same synthetic sets. For each size, three runs of `clamgate run`:
# RELOAD mode with ConcurrentDatabaseReload yes (the baseline), RELOAD mode
# with it off, and managed mode. Each promotes a small daily-v1, then a big
# v2 (so the live engine is big), then, measured, a big v3 while two
# clamdscan loops scan a clean sample through the production socket.
# Printed per size and mode: update -> live (last write into incoming until
# VERSION through the production socket shows v3), engine loads for the v3
# update (clamd starts, from a wrapper that logs each exec, plus
# "Database correctly reloaded" lines in production's log; managed mode also
# counts the "Loaded N signatures" lines of its clamds' logs), the peak total
# RSS of all clamd processes during it (sampled every 100 ms), failed scans
# during it, and scan latency p99 before it (steady) and during it, and the
# longest scan during it. A mode whose v3 does not show within LIVE_TIMEOUT
# is reported as such (RELOAD mode with ConcurrentDatabaseReload no, under
# load, may never show it) and the run goes on.
# Goals: managed / RELOAD(concurrent) update->live <= 0.6; 1 engine load;
# 0 failed scans in managed mode.
# Usage: benches/managed.sh     (env SIZES="1000000 4000000" SETTLE=1s STEADY=5
#        MODES="reload-on managed reload-off" LIVE_TIMEOUT=300; reload-on is the ratios' baseline)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-1000000 4000000}
SETTLE=${SETTLE:-1s}
STEADY=${STEADY:-5}
MODES=${MODES:-reload-on managed reload-off}
LIVE_TIMEOUT=${LIVE_TIMEOUT:-300}

BENCH=managed
source benches/lib.sh
base=$work
on_cleanup() { # managed clamds are not our children: stop them by their PID files, after the daemons
  local f
  for f in "${pids[@]}"; do stop_pid "$f"; done
  for f in "$base"/*/state/clamd/*/clamd.pid "$base"/*/clamd.pid; do [[ -f $f ]] && stop_pid "$(cat "$f")"; done
  work=$base
}

build_with_fixtures
cat > "$base/clamd-counting" <<EOT
#!/bin/sh
# Each exec of clamd is one engine load: record it, then become clamd.
echo "\$(date +%s.%N)" >> "\$(dirname "\$0")/clamd-starts"
exec /usr/sbin/clamd "\$@"
EOT
chmod +x "$base/clamd-counting"
clean_sample=$base/fx/corpus/clean/letter.txt
[[ -f $clean_sample ]] || die "no clean sample $clean_sample"

load_loop() { # SOCKET OUT: clamdscan in a loop until $work/stop exists
  local sock=$1 out=$2 s rc
  printf 'LocalSocket %s\n' "$sock" > "$out.conf"
  while [[ ! -e $work/stop ]]; do
    s=$(now); rc=0
    timeout 120 clamdscan --config-file="$out.conf" --stream --no-summary "$clean_sample" >/dev/null 2>&1 || rc=$?
    echo "$s $(now) $rc" >> "$out"
  done
}
rss_loop() { # OUT: the peak of the summed VmRSS (KiB) of clamds under $work
  local out=$1 max=0 sum p
  while [[ ! -e $work/stop ]]; do
    sum=0
    for p in $(pgrep -x clamd || true); do
      grep -qs -- "$work/" "/proc/$p/cmdline" || continue
      sum=$(( sum + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0) ))
    done
    (( sum > max )) && max=$sum
    echo "$max" > "$out"
    sleep 0.1
  done
}
promotions() { grep -c '"promotion.done"' "$work/state/journal.jsonl" 2>/dev/null || echo 0; }
version_is() { [[ $(db_version "$work/prod/clamd.sock") == "$1" ]]; } # until_ok re-runs it
promoted() { (( $(promotions) >= $1 )); }
put() { cp "$1" "$work/incoming/daily.cud.tmp" && mv "$work/incoming/daily.cud.tmp" "$work/incoming/daily.cud"; }
loads_in_logs() { cat "$@" 2>/dev/null | grep -cE 'Database correctly reloaded|Loaded [0-9]+ signatures' || true; }
p99() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) { print "-"; exit } i = int(NR * 0.99); if (i < 1) i = 1; printf "%.0f", v[i] * 1000 }'; }

# run MODE SIZE: one daemon from scratch; prints its row's fields into $base/result.MODE.SIZE
run() {
  local mode=$1 size=$2 daemon t0 live n before_loads starts_before reloads_before
  work=$base/$mode-$size; mkdir -p "$work"
  ln -s "$base/fx" "$work/fx"
  cp -a "$base/clamd-counting" "$work/clamd-counting"
  local wrap=$work/clamd-counting
  local toml="binary = \"$wrap\""
  if [[ $mode == managed ]]; then
    mkdir -p "$work/prod"
    printf '%s\n' "LocalSocket $work/prod/clamd.sock" "LocalSocketMode 660" "TemporaryDirectory $work" "LogTime yes" \
      "Foreground no" "SelfCheck 600" > "$work/operator-clamd.conf"
    toml+=$'\n'"managed = true"$'\n'"conf = \"$work/operator-clamd.conf\""
  fi
  seed_v1
  CLAMD_TOML=$toml start_daemon "$SETTLE" 10s; daemon=$pid
  if [[ $mode != managed ]]; then
    local concurrent=yes; [[ $mode == reload-off ]] && concurrent=no
    mkdir -p "$work/prod"
    printf '%s\n' "Foreground yes" "LocalSocket $work/prod/clamd.sock" "DatabaseDirectory $work/state/current" \
      "TemporaryDirectory $work" "SelfCheck 0" "LogTime yes" "ConcurrentDatabaseReload $concurrent" > "$work/prod/clamd.conf"
    rm -f "$work/prod/clamd.sock"
    "$wrap" --config-file="$work/prod/clamd.conf" >> "$work/prod/clamd.log" 2>&1 &
    echo "$!" > "$work/clamd.pid"
    until_ok 120 "production clamd PONG" ping_ok "$work/prod/clamd.sock"
  fi
  put "$base/big-$size/v2/daily.cud"
  until_ok 900 "v2 live ($mode)" version_is 2 || { tail -20 "$work/daemon.log" >&2; return 1; }
  until_ok 900 "v2 promotion.done" promoted 2
  sleep 2 # the old clamd drained (managed), production idle
  rss_loop "$work/rss" & pids+=("$!")
  load_loop "$work/prod/clamd.sock" "$work/scans.a" & pids+=("$!")
  load_loop "$work/prod/clamd.sock" "$work/scans.b" & pids+=("$!")
  sleep "$STEADY"
  starts_before=$(cat "$work/clamd-starts" 2>/dev/null | wc -l)
  reloads_before=$(loads_in_logs "$work/prod/clamd.log")
  before_loads=$(loads_in_logs "$work"/state/clamd/*/clamd.log "$work"/state/clamd/retired/*.log)
  t0=$(now)
  put "$base/big-$size/v3/daily.cud"
  if until_ok "$LIVE_TIMEOUT" "v3 live ($mode)" version_is 3; then
    live=$(echo "$(now) - $t0" | bc)
    until_ok "$LIVE_TIMEOUT" "v3 promotion.done" promoted 3 || true
  else
    live=never
    grep -E 'ERROR' "$work/daemon.log" | tail -3 >&2 || true
  fi
  sleep 3 # drain and stop of the old clamd, scans go on meanwhile
  touch "$work/stop"; sleep 0.5
  local t1; t1=$(now)
  n=$(( $(wc -l < "$work/clamd-starts") - starts_before ))
  local reloads=$(( $(loads_in_logs "$work/prod/clamd.log") - reloads_before ))
  local logged=$(( $(loads_in_logs "$work"/state/clamd/*/clamd.log "$work"/state/clamd/retired/*.log) - before_loads ))
  local failed steady during
  failed=$(cat "$work"/scans.? | awk -v t0="$t0" '$1 >= t0 && $3 != 0' | wc -l)
  steady=$(cat "$work"/scans.? | awk -v t0="$t0" '$1 < t0 { print $2 - $1 }' | p99)
  during=$(cat "$work"/scans.? | awk -v t0="$t0" -v t1="$t1" '$1 >= t0 && $1 <= t1 { print $2 - $1 }' | p99)
  local scans; scans=$(cat "$work"/scans.? | awk -v t0="$t0" '$1 >= t0' | wc -l)
  local longest; longest=$(cat "$work"/scans.? | awk -v t0="$t0" '$1 >= t0 && $2 - $1 > m { m = $2 - $1 } END { printf "%.0f", m * 1000 }')
  local logs_note="-"; [[ $mode == managed ]] && logs_note=$logged
  echo "$live $(( n + reloads )) $n $reloads $logs_note $(( $(cat "$work/rss") / 1024 )) $failed $scans $steady $during $longest" > "$base/result.$mode.$size"
  stop_pid "$daemon" 30
  [[ -f $work/clamd.pid ]] && stop_pid "$(cat "$work/clamd.pid")"
  local f; for f in "$work"/state/clamd/*/clamd.pid; do [[ -f $f ]] && stop_pid "$(cat "$f")"; done
  work=$base
}

for size in $SIZES; do
  echo "building $size-signature daily.cud v2 and v3..." >&2
  for v in 2 3; do mkdir -p "$base/big-$size/v$v" && build_daily "$v" "$size" "$base/big-$size/v$v/daily.cud"; done
  for mode in $MODES; do
    echo "size $size, $mode..." >&2
    run "$mode" "$size"
  done
done

printf '\n%-9s %-11s %8s %6s %13s %9s %9s %12s %10s %10s %10s\n' size mode "live s" ratio "loads(st+rl)" "log loads" "RSS MiB" "failed/scans" "p99 st ms" "p99 up ms" "max up ms"
verdicts=()
for size in $SIZES; do
  base_live=never; [[ -f $base/result.reload-on.$size ]] && read -r base_live _ < "$base/result.reload-on.$size"
  for mode in $MODES; do
    read -r live loads n reloads logged rss failed scans steady during longest < "$base/result.$mode.$size"
    ratio=-; [[ $live != never && $base_live != never ]] && ratio=$(echo "scale=2; $live / $base_live" | bc)
    [[ $live != never ]] && live=$(printf '%.2f' "$live")
    printf '%-9s %-11s %8s %6s %13s %9s %9s %12s %10s %10s %10s\n' "$size" "$mode" "$live" "$ratio" "$loads ($n+$reloads)" "$logged" "$rss" "$failed/$scans" "$steady" "$during" "$longest"
    if [[ $mode == managed ]]; then
      if [[ $ratio != - ]] && (( $(echo "$ratio <= 0.6" | bc) )); then verdicts+=("$size managed/RELOAD live <= 0.6: PASS ($ratio)"); else verdicts+=("$size managed/RELOAD live <= 0.6: MISS ($ratio)"); fi
      if [[ $loads == 1 ]]; then verdicts+=("$size managed engine loads == 1: PASS"); else verdicts+=("$size managed engine loads == 1: MISS ($loads)"); fi
      if [[ $failed == 0 ]]; then verdicts+=("$size managed failed scans == 0: PASS"); else verdicts+=("$size managed failed scans == 0: MISS ($failed)"); fi
    fi
  done
done
printf '%s\n' "${verdicts[@]}"
