#!/usr/bin/env bash
# Benchmark (not a test): what per-file isolation costs. A live release of
# daily-v1 plus FEEDS third-party feed files, and a candidate in which the
# daily and every feed file changed and one feed file is bad. `clamgate
# check --baseline LIVE` runs the candidate with `isolation = "file"` (the
# bad file attributed and held, the reduced set gated again: exit 4) and
# with `isolation = "set"` (one full gate run: exit 1), in the same run, on
# the same files. Two bad files:
#   direct: the bad file's signature hits a clean sample; its name points at
#           the file, so no bisection run is needed;
#   pair:   two files each within the false-positive allowance alone and
#           over it together, naming each other's signatures: only bisection
#           finds them, within the default max_bisect_runs (16: a pair
#           among n suspects takes at most 2 * ceil(log2 n) + 2 runs, 12 for 21).
# Target: file / set < 3x. Usage: benches/isolate.sh  (env FEEDS=20 LINES=200 RUNS=3)
set -euo pipefail
cd "$(dirname "$0")/.."
FEEDS=${FEEDS:-20}
LINES=${LINES:-200}
RUNS=${RUNS:-3}

BENCH=isolate
source benches/lib.sh

build_with_fixtures
fx=$work/fx

# feed DIR N VERSION: feed-N.hdb with LINES hashes that match nothing.
feed() {
  local i
  for (( i = 0; i < LINES; i++ )); do
    printf '%032x:%d:Bench.Feed%02d.V%d.%d\n' "$(( (RANDOM << 30) | (RANDOM << 15) | RANDOM ))" $(( 100 + i )) "$2" "$3" "$i"
  done > "$1/feed-$(printf %02d "$2").hdb"
}

live=$work/live
mkdir -p "$live"
cp "$fx/sets/daily-v1/daily.cud" "$live/"
for (( n = 1; n <= FEEDS; n++ )); do feed "$live" "$n" 1; done

letter=$fx/corpus/clean/letter.txt
pdf=$fx/corpus/clean/invoice.pdf
hash() { echo "$(md5sum < "$1" | cut -d' ' -f1):$(stat -c %s "$1")"; }
# candidate NAME: daily-v2 and every feed file at version 2; then the bad ones.
candidate() {
  local d=$work/$1
  mkdir -p "$d"
  cp "$fx/sets/daily-v2/daily.cud" "$d/"
  for (( n = 1; n <= FEEDS; n++ )); do feed "$d" "$n" 2; done
  echo "$d"
}
direct=$(candidate direct)
echo "$(hash "$letter"):Bench.Feed07.FalsePositive" >> "$direct/feed-07.hdb"
pair=$(candidate pair)
{ echo "$(hash "$letter"):Bench.Pair.Letter"; echo "00000000000000000000000000000001:1:Bench.Pair.Invoice"; } >> "$pair/feed-07.hdb"
{ echo "$(hash "$pdf"):Bench.Pair.Invoice"; echo "00000000000000000000000000000002:1:Bench.Pair.Letter"; } >> "$pair/feed-13.hdb"

policy() { printf 'isolation = "%s"\n%s\n' "$1" "${2:-}" > "$work/$1$3.toml"; echo "$work/$1$3.toml"; }

# run DIR POLICY -> REPLY "seconds exit bisect_runs outcome"
run() {
  local t0 code out
  t0=$(now)
  set +e
  out=$("$bin" check "$1" --baseline "$live" --corpus "$fx/corpus" --policy "$2" --json 2>"$work/check.err")
  code=$?
  set -e
  local secs runs outcome
  secs=$(echo "$(now) - $t0" | bc)
  runs=$(jq -r '.isolation.bisect_runs // 0' <<< "$out")
  outcome=$(jq -r '.isolation.outcome // .verdict' <<< "$out")
  held=$(jq -r '[.isolation.held[]?.name] | join(",")' <<< "$out")
  REPLY="$secs $code $runs $outcome ${held:--}"
}

printf '\n%d feed files of %d signatures each plus daily.cud, all changed against the live release; %d runs, fastest counts; %s cores\n' "$FEEDS" "$LINES" "$RUNS" "$(nproc)"
printf '%-8s %-6s %9s %5s %8s %-10s %s\n' case mode seconds exit bisect outcome held
for case in direct pair; do
  extra=""; [[ $case == pair ]] && extra="allowed_false_positives = 1"
  declare -A best=()
  for mode in set file; do
    p=$(policy "$mode" "$extra" "-$case")
    times=()
    for (( r = 1; r <= RUNS; r++ )); do
      run "$work/$case" "$p"
      read -r secs code runs outcome held <<< "$REPLY"
      times+=("$secs")
    done
    best[$mode]=$(min "${times[@]}")
    printf '%-8s %-6s %9.2f %5s %8s %-10s %s\n' "$case" "$mode" "${best[$mode]}" "$code" "$runs" "$outcome" "$held"
  done
  ratio=$(echo "scale=2; ${best[file]} / ${best[set]}" | bc)
  verdict=PASS; (( $(echo "$ratio < 3" | bc) )) || verdict=MISS
  printf '%-8s file / set = %sx  target < 3x: %s\n' "$case" "$ratio" "$verdict"
done
