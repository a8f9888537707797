#!/usr/bin/env bash
# Benchmark (not a test): `clamgate check` on synthetic candidates of 200,000
# and 1,000,000 signatures against the same work done bare, measured in the
# same run on the same files, interleaved round by round (bare, then check):
# a bare clamd started on the candidate until it answers PING, plus the
# corpus scanned through it with clamdscan --stream. clamgate's own peak
# resident memory (VmHWM of the clamgate process, not of its canary clamd) is
# read from /proc while it runs.
# Target: check <= 1.1 x (bare load + corpus scan) at each size (median of
# the per-round ratios), clamgate VmHWM < 30 MiB.
# Usage: benches/check-1m.sh   (env SIGS="200000 1000000" ROUNDS=5 CARGO_TARGET_DIR=target BIN=)
# Exits 1 when a target is missed. On a shared machine, read the spread too.
set -euo pipefail
cd "$(dirname "$0")/.."
SIGS=${SIGS:-200000 1000000}
ROUNDS=${ROUNDS:-5}
TARGET=${TARGET:-1.1}
TIMEOUT=${TIMEOUT:-300}    # seconds any one wait may take

BENCH=check-1m
source benches/lib.sh

build_with_fixtures
# BIN=path compares another build (e.g. main's) with the same script.
bin=${BIN:-$bin}
corpus=$work/fx/corpus
mapfile -t corpus_files < <(find "$corpus" -type f ! -name expect.toml | sort)
printf 'LocalSocket %s\n' "$work/a.sock" > "$work/a.client"

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
max() { printf '%s\n' "$@" | sort -g | tail -1; }

# bare DIR: seconds from clamd's start to PONG, plus the corpus through it.
bare() {
  local dir=$1 t load scan rc
  SECONDS=0; t=$(now); start_clamd "$dir" "$work/a.sock" "$work/a.conf"; pids+=("$pid")
  until ping_ok "$work/a.sock"; do
    kill -0 "$pid" 2>/dev/null || die "bare clamd exited: $(tail -3 "$work/a.conf.log")"
    (( SECONDS > TIMEOUT )) && die "bare clamd: no PONG within ${TIMEOUT}s"
    sleep 0.01
  done
  load=$(echo "$(now) - $t" | bc)
  t=$(now)
  rc=0; timeout "$TIMEOUT" clamdscan --config-file="$work/a.client" --stream --no-summary "${corpus_files[@]}" >/dev/null 2>&1 || rc=$?
  (( rc <= 1 )) || die "bare corpus scan failed (clamdscan exit $rc)" # 1 = something found, as expected
  scan=$(echo "$(now) - $t" | bc)
  stop_pid "$pid"
  echo "$load $scan"
}

# check DIR OUT: seconds of `clamgate check --json`, and the process's VmHWM (KiB).
check() {
  local dir=$1 out=$2 t hwm state key val rc elapsed
  t=$(now)
  CLAMGATE_LOG=warn "$bin" check "$dir" --corpus "$corpus" --policy policies/default.toml --json > "$out" 2> "$out.err" &
  pid=$!; pids+=("$pid")
  hwm=0; SECONDS=0
  # GNU time -v is no use here: its "maximum resident set size" comes from
  # wait4(), which folds in the waited-for children, i.e. the canary clamd.
  # VmHWM only grows; the last value read before the process exits is its peak.
  while :; do
    state=Z; read -r _ _ state _ 2>/dev/null < "/proc/$pid/stat" || true
    [[ $state == Z ]] && break
    while read -r key val _; do
      [[ $key == VmHWM: ]] && hwm=$val
    done 2>/dev/null < "/proc/$pid/status" || true
    (( SECONDS > TIMEOUT )) && die "clamgate check: not done within ${TIMEOUT}s"
    sleep 0.01
  done
  rc=0; wait "$pid" || rc=$?
  elapsed=$(echo "$(now) - $t" | bc)
  [[ $rc == 0 ]] || die "clamgate check exited $rc: $(head -c 600 "$out") $(cat "$out.err")"
  echo "$elapsed $hwm"
}

ok=1
rows=()
hwm_all=()
for sigs in $SIGS; do
  echo "building a $sigs-signature daily.cud..." >&2
  mkdir -p "$work/s$sigs" && build_daily 2 "$sigs" "$work/s$sigs/daily.cud"
  bares=(); checks=(); ratios=(); loads=(); fixed=()
  for r in $(seq "$ROUNDS"); do
    echo "$sigs signatures, round $r/$ROUNDS..." >&2
    read -r load scan < <(bare "$work/s$sigs")
    read -r elapsed hwm < <(check "$work/s$sigs" "$work/check-$sigs-$r.json")
    sum=$(echo "$load + $scan" | bc)
    bares+=("$sum"); loads+=("$load"); checks+=("$elapsed"); hwm_all+=("$hwm")
    ratios+=("$(echo "scale=4; $elapsed / $sum" | bc)")
    # clamgate's own time: the check minus its canary's load and corpus scan
    # (from --json), less at the mercy of how fast clamd got the CPU.
    canary_s=$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))["canary"]; print((c["load_ms"] + c["scan_ms"]) / 1000)' "$work/check-$sigs-$r.json")
    fixed+=("$(echo "($elapsed - $canary_s) * 1000" | bc)")
  done
  m=$(median "${ratios[@]}")
  verdict=PASS; (( $(echo "$m <= $TARGET" | bc) )) || { verdict=MISS; ok=0; }
  rows+=("$(printf '%-10s %10.3f %10.3f %10.3f %8.3f %8.3f-%-8.3f %6.0f (%3.0f-%-4.0f) %s' "$sigs" "$(median "${loads[@]}")" "$(median "${bares[@]}")" \
    "$(median "${checks[@]}")" "$m" "$(min "${ratios[@]}")" "$(max "${ratios[@]}")" \
    "$(median "${fixed[@]}")" "$(min "${fixed[@]}")" "$(max "${fixed[@]}")" "$verdict")")
done

printf '\n%s rounds per size, bare and check interleaved; seconds are medians\n' "$ROUNDS"
printf '%-10s %10s %10s %10s %8s %-17s %-17s %s\n' signatures "bare load" "bare+scan" check ratio "ratio min-max" "own ms (min-max)" "target <= $TARGET"
printf '%s\n' "${rows[@]}"
echo "own ms: the check's time outside its canary's load and corpus scan (median)"
hwm_max=$(max "${hwm_all[@]}")
printf 'clamgate VmHWM, MiB (max over all checks): %.1f  target < 30: ' "$(echo "scale=3; $hwm_max / 1024" | bc)"
if (( hwm_max < 30 * 1024 )); then echo PASS; else echo MISS; ok=0; fi
(( ok )) # exit status 1 when a target is missed
