#!/usr/bin/env bash
# Benchmark (not a test): time from the last write of a 1,000,000-signature
# update into incoming until production clamd's VERSION shows it, against the
# sum of a bare canary load, the corpus scan and a bare RELOAD, all measured
# in the same run on the same files. Target: ratio <= 1.3 plus the settle time.
# Usage: benches/promote-1m.sh        (env SIGS=1000000 SETTLE=1s)
set -euo pipefail
cd "$(dirname "$0")/.."
SIGS=${SIGS:-1000000}
SETTLE=${SETTLE:-1s}
settle_s=${SETTLE%s}

BENCH=promote-1m
source benches/lib.sh

echo "building (release) and fixtures..." >&2
cargo build --release --locked -q
testdata/make-fixtures "$work/fx" >/dev/null
bin=${CARGO_TARGET_DIR:-$PWD/target}/release/clamgate

echo "building a $SIGS-signature daily.cud (version 2)..." >&2
mkdir -p "$work/big" && build_daily 2 "$SIGS" "$work/big/daily.cud"
corpus_files=$(find "$work/fx/corpus" -type f ! -name expect.toml)

# --- baseline a: bare clamd start to PONG on the update -------------------
t=$(now); start_clamd "$work/big" "$work/a.sock" "$work/a.conf"; pids+=("$pid")
until ping_ok "$work/a.sock"; do sleep 0.01; done
load=$(echo "$(now) - $t" | bc)
# --- baseline b: the corpus scanned through it ------------------------------
printf 'LocalSocket %s\n' "$work/a.sock" > "$work/a.client"
t=$(now); clamdscan --config-file="$work/a.client" --stream --no-summary $corpus_files >/dev/null 2>&1 || true
scan=$(echo "$(now) - $t" | bc)
stop_pid "$pid"
# --- baseline c: bare RELOAD of a clamd from v1 to the update ---------------
ln -s "$work/fx/sets/daily-v1" "$work/link"
start_clamd "$work/link" "$work/c.sock" "$work/c.conf"; pids+=("$pid")
until ping_ok "$work/c.sock"; do sleep 0.01; done
ln -sfn "$work/big" "$work/link.new" && mv -T "$work/link.new" "$work/link"
t=$(now); printf 'zRELOAD\0' | socat -t 2 - "UNIX-CONNECT:$work/c.sock" >/dev/null
until [[ $(db_version "$work/c.sock") == 2 ]]; do sleep 0.01; done
reload=$(echo "$(now) - $t" | bc)
stop_pid "$pid"

# --- clamgate: the daemon with v1 live and production running ---------------
seed_v1
start_daemon "$SETTLE" 10s; daemon_pid=$pid
start_production

cp "$work/big/daily.cud" "$work/incoming/daily.cud.tmp"
mv "$work/incoming/daily.cud.tmp" "$work/incoming/daily.cud"
t=$(now)
until [[ $(db_version "$work/prod/clamd.sock") == 2 ]]; do sleep 0.02; done
gate=$(echo "$(now) - $t" | bc)
peak=$(grep VmHWM "/proc/$daemon_pid/status" | awk '{print $2}')

bare=$(echo "$load + $scan + $reload" | bc)
ratio=$(echo "scale=2; ($gate - $settle_s) / $bare" | bc)
printf '\n%-46s %10s\n' "measure ($SIGS signatures)" "seconds"
printf '%-46s %10.3f\n' "bare canary load (clamd start to PONG)" "$load" "corpus scan (20 samples)" "$scan" "bare RELOAD until VERSION shows it" "$reload" "sum of the bare steps" "$bare" "clamgate: last write -> production VERSION" "$gate" "settle" "$settle_s"
printf '%-46s %10s\n' "ratio (clamgate - settle) / bare sum" "$ratio"
printf '%-46s %10s\n' "clamgate daemon peak RSS (KiB)" "$peak"
if (( $(echo "$ratio <= 1.3" | bc) )); then echo "target ratio <= 1.3: PASS"; else echo "target ratio <= 1.3: MISS"; fi
