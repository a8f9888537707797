#!/usr/bin/env bash
# Benchmark (not a test): `clamgate check` on a 1,000,000-signature candidate
# against the same work done bare, both measured in the same run on the same
# files: a bare clamd started on the candidate until it answers PING, plus
# the corpus scanned through it with clamdscan --stream. clamgate's own peak
# resident memory (VmHWM of the clamgate process, not of its canary clamd) is
# read from /proc while it runs.
# Target: check <= 1.3 x (bare load + corpus scan), clamgate VmHWM < 30 MiB.
# Usage: benches/check-1m.sh      (env SIGS=1000000 RUNS=2 CARGO_TARGET_DIR=target)
# Each side runs RUNS times; the table compares the fastest of each. Exits 1
# when a target is missed.
set -euo pipefail
cd "$(dirname "$0")/.."
SIGS=${SIGS:-1000000}
RUNS=${RUNS:-2}
TIMEOUT=${TIMEOUT:-300}    # seconds any one wait may take

BENCH=check-1m
source benches/lib.sh

build_with_fixtures

echo "building a $SIGS-signature daily.cud..." >&2
mkdir -p "$work/big" && build_daily 2 "$SIGS" "$work/big/daily.cud"
corpus=$work/fx/corpus
mapfile -t corpus_files < <(find "$corpus" -type f ! -name expect.toml | sort)
printf 'LocalSocket %s\n' "$work/a.sock" > "$work/a.client"

# --- bare: clamd start to PONG, then the corpus through it ------------------
loads=(); scans=(); sums=()
for r in $(seq "$RUNS"); do
  echo "bare run $r/$RUNS..." >&2
  SECONDS=0; t=$(now); start_clamd "$work/big" "$work/a.sock" "$work/a.conf"; pids+=("$pid")
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
  loads+=("$load"); scans+=("$scan"); sums+=("$(echo "$load + $scan" | bc)")
done

# --- clamgate check, with the clamgate process's VmHWM polled ---------------
# GNU time -v is no use here: its "maximum resident set size" comes from
# wait4(), which folds in the waited-for children, i.e. the canary clamd.
checks=(); hwms=(); canary_load=(); canary_peak=()
for r in $(seq "$RUNS"); do
  echo "clamgate check run $r/$RUNS..." >&2
  out=$work/check-$r.json
  t=$(now)
  CLAMGATE_LOG=warn "$bin" check "$work/big" --corpus "$corpus" --policy policies/default.toml --json \
    > "$out" 2> "$work/check-$r.err" &
  pid=$!; pids+=("$pid")
  hwm=0; SECONDS=0
  # VmHWM only grows; the last value read before the process exits is its peak
  # (the address space, and the line, vanish once it is a zombie).
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
  [[ $rc == 0 ]] || die "clamgate check exited $rc: $(head -c 600 "$out") $(cat "$work/check-$r.err")"
  checks+=("$elapsed"); hwms+=("$hwm")
  read -r cl cp < <(python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))["canary"]; print(c["load_ms"], c["peak_rss_bytes"])' "$out")
  canary_load+=("$cl"); canary_peak+=("$cp")
done

bare=$(min "${sums[@]}"); gate=$(min "${checks[@]}")
ratio=$(echo "scale=3; $gate / $bare" | bc)
hwm_max=$(printf '%s\n' "${hwms[@]}" | sort -n | tail -1)
list() { local o=(); for v; do o+=("$(printf '%.3f' "$v")"); done; echo "${o[*]}"; }
mib() { local o=(); for v; do o+=("$(printf '%.1f' "$(echo "scale=3; $v / 1024" | bc)")"); done; echo "${o[*]}"; }
printf '\n%-48s %s\n' "measure ($SIGS signatures, $RUNS runs each)" "seconds: fastest (all runs)"
printf '%-48s %8.3f  (%s)\n' \
  "bare clamd load (start to PONG)" "$(min "${loads[@]}")" "$(list "${loads[@]}")" \
  "corpus scan (${#corpus_files[@]} samples, clamdscan --stream)" "$(min "${scans[@]}")" "$(list "${scans[@]}")" \
  "sum of the bare steps (per run)" "$bare" "$(list "${sums[@]}")" \
  "clamgate check --json" "$gate" "$(list "${checks[@]}")"
printf '%-48s %8s\n' "ratio check / bare sum" "$ratio" "target ratio" "<= 1.3"
printf '%-48s %8s  (%s)\n' "clamgate VmHWM, MiB (max; all runs)" "$(mib "$hwm_max")" "$(mib "${hwms[@]}")"
printf '%-48s %8s\n' "target VmHWM, MiB" "< 30"
printf '%-48s %8s  (ms, from --json)\n' "canary load time (all runs)" "${canary_load[*]}"
printf '%-48s %8s  (MiB, from --json)\n' "canary peak RSS (all runs)" "$(mib $(for v in "${canary_peak[@]}"; do echo $((v / 1024)); done))"
ok=1
if (( $(echo "$ratio <= 1.3" | bc) )); then echo "target ratio <= 1.3: PASS"; else echo "target ratio <= 1.3: MISS"; ok=0; fi
if (( hwm_max < 30 * 1024 )); then echo "target clamgate VmHWM < 30 MiB: PASS"; else echo "target clamgate VmHWM < 30 MiB: MISS"; ok=0; fi
(( ok )) # exit status 1 when a target is missed
