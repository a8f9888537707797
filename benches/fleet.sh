#!/usr/bin/env bash
# Benchmark (not a test): the gate's embedded publish server (`clamgate run`
# with [publish], bearer token on) under a fleet's load, on loopback.
#  1. Polling: HOSTS simulated hosts, one keep-alive connection each (wrk
#     -c HOSTS), asking for the ring pointer as a host's Follower does: a
#     conditional GET (If-None-Match: the pointer's ETag, answered 304).
#     Back to back, not once a poll_interval, so the rate is the server's
#     ceiling; p99 measured at that saturation. Baseline, same wrk settings
#     in the same run: benches/hello (a minimal static hyper responder).
#  2. Fan-out: a release of FANOUT_MIB MiB (FILES files) fetched completely
#     by HOSTS_FANOUT concurrent curl processes (each one host, all files on
#     one connection) from the embedded server, against the same curls from
#     `python3 -m http.server` (threaded, a plain static server) over the same
#     tree. Wall time until the last host has every byte; bytes checked.
#     The release is written into the published tree by this script, not
#     vetted by the gate (a canary over 100 MiB of signatures would dominate
#     the run and tests nothing of serving); the gate's own small release
#     gives the ring pointer that part 1 polls.
# Servers alternate for ROUNDS rounds; the best round of each counts.
# Targets: poll req/s >= 0.5 x hello's; poll p99 < 10 ms; fan-out time
# <= 1.0 x python's (clamgate serves a release no slower than a plain
# static server).
# Usage: benches/fleet.sh
#   env HOSTS=50 THREADS=2 DURATION=10s WARMUP=2s FANOUT_MIB=100 FILES=4
#       HOSTS_FANOUT=10 ROUNDS=3 CARGO_TARGET_DIR=target
# Exits 1 when a target is missed.
set -euo pipefail
cd "$(dirname "$0")/.."
HOSTS=${HOSTS:-50}
THREADS=${THREADS:-2}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
FANOUT_MIB=${FANOUT_MIB:-100}
FILES=${FILES:-4}
HOSTS_FANOUT=${HOSTS_FANOUT:-10}
ROUNDS=${ROUNDS:-3}
TIMEOUT=${TIMEOUT:-300} # seconds any one wait or transfer may take
target_dir=$(mkdir -p "${CARGO_TARGET_DIR:-target}" && cd "${CARGO_TARGET_DIR:-target}" && pwd)

BENCH=fleet
source benches/lib.sh

secs() { case $1 in *ms) echo 1 ;; *m) echo $(( ${1%m} * 60 )) ;; *) echo "${1%s}" ;; esac; }
# wrk OUT -> "rps p99_ms bad errors"
parse_wrk() {
  awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    $1 == "99%" { p99 = ms($2) }
    $1 == "Requests/sec:" { rps = $2 }
    /Non-2xx or 3xx responses:/ { bad = $NF }
    /Socket errors:/ { gsub(",", ""); err = $4 + $6 + $8 + $10 }
    END { printf "%s %.3f %d %d\n", rps, p99, bad, err }' "$1"
}
run_wrk() { # name url [wrk args] -> $work/wrk-name.txt
  local name=$1 url=$2; shift 2
  timeout $(( $(secs "$WARMUP") + TIMEOUT )) wrk -t"$THREADS" -c"$HOSTS" -d"$WARMUP" "$@" "$url" > /dev/null
  timeout $(( $(secs "$DURATION") + TIMEOUT )) wrk -t"$THREADS" -c"$HOSTS" -d"$DURATION" --latency "$@" "$url" > "$work/wrk-$name.txt"
}

echo "building (release) clamgate, benches/hello and fixtures..." >&2
build_with_fixtures
CARGO_TARGET_DIR=$target_dir cargo build --release --locked -q --manifest-path benches/hello/Cargo.toml
hello=$target_dir/release/clamgate-bench-hello
[[ -x $hello ]] || die "$hello: not built"

# --- the gate: clamgate run with [publish], its first release out ----------
"$bin" keygen --out "$work/keys" > /dev/null
echo "bench-fleet-token" > "$work/token"
publish=$(free_port)
seed_v1
start_daemon 300ms 10s "[publish]
dir = \"$work/publish\"
listen = \"127.0.0.1:$publish\"
key = \"$work/keys/publish.key\"
token = \"$work/token\"
host_poll_interval = \"1s\"
[[publish.ring]]
name = \"all\"
hosts = []
soak = \"0s\""
auth=(-H "Authorization: Bearer bench-fleet-token")
ring_url=http://127.0.0.1:$publish/rings/all.json
pointer_out() { [[ $(curl -s -m 2 -o /dev/null -w '%{http_code}' "${auth[@]}" "$ring_url") == 200 ]]; }
until_ok "$TIMEOUT" "the ring pointer on the embedded server" pointer_out || { cat "$work/daemon.log" >&2; exit 1; }
etag=$(curl -s -m 2 -D - -o /dev/null "${auth[@]}" "$ring_url" | tr -d '\r' | awk -F': ' 'tolower($1) == "etag" { print $2 }')
[[ -n $etag ]] || die "no ETag on $ring_url"
code=$(curl -s -m 2 -o /dev/null -w '%{http_code}' "${auth[@]}" -H "If-None-Match: $etag" "$ring_url")
[[ $code == 304 ]] || die "a host's conditional GET got $code, not 304"

# --- the fan-out release and the plain static server over the same tree ----
rel=$work/publish/releases/bench-fanout
mkdir -p "$rel"
per=$(( FANOUT_MIB * 1024 / FILES )) # KiB per file
urls_cg=() urls_py=()
pyport=$(free_port)
for (( i = 0; i < FILES; i++ )); do
  head -c "${per}K" /dev/urandom > "$rel/part$i.hdb"
  urls_cg+=(-o /dev/null "http://127.0.0.1:$publish/releases/bench-fanout/part$i.hdb")
  urls_py+=(-o /dev/null "http://127.0.0.1:$pyport/releases/bench-fanout/part$i.hdb")
done
total=$(( per * 1024 * FILES ))
(cd "$work/publish" && exec python3 -m http.server --bind 127.0.0.1 "$pyport" > "$work/python.log" 2>&1) &
pids+=("$!")
until_ok 30 "python3 -m http.server" listening "$pyport"
sum_cg=$(curl -s "${auth[@]}" "${urls_cg[2]}" | sha256sum | cut -d' ' -f1)
sum_py=$(curl -s "${urls_py[2]}" | sha256sum | cut -d' ' -f1)
want=$(sha256sum "$rel/part0.hdb" | cut -d' ' -f1)
[[ $sum_cg == "$want" && $sum_py == "$want" ]] || die "a server sent other bytes than part0.hdb"

# fanout NAME CURL_ARGS... (each URL after its own -o /dev/null) -> seconds until every host has every byte (checked)
fanout() {
  local name=$1 t0 t1 h ok=1; shift
  t0=$(now)
  for (( h = 0; h < HOSTS_FANOUT; h++ )); do
    timeout "$TIMEOUT" curl -s -w '%{size_download}\n' "$@" > "$work/fan-$name-$h.txt" &
  done
  wait_fan || ok=0
  t1=$(now)
  (( ok )) || die "a $name download failed"
  for (( h = 0; h < HOSTS_FANOUT; h++ )); do
    got=$(awk '{ n += $1 } END { printf "%d", n }' "$work/fan-$name-$h.txt")
    [[ $got == "$total" ]] || die "host $h got $got of $total bytes from $name"
  done
  echo "$t1 - $t0" | bc -l
}
wait_fan() { local j rc=0; for j in $(jobs -p); do is_server "$j" || wait "$j" || rc=1; done; return $rc; }
is_server() { local p; for p in "${pids[@]}"; do [[ $p == "$1" ]] && return 0; done; return 1; }

# --- measure, alternating ----------------------------------------------------
hport=$(free_port)
"$hello" "$hport" '{"ring":"all","release":"x","manifest_sha256":"x","generation":1}' > /dev/null 2>&1 &
pids+=("$!")
until_ok 30 "benches/hello" listening "$hport"
cat > "$work/poll.lua" <<EOT
wrk.headers["If-None-Match"] = '$etag'
wrk.headers["Authorization"] = "Bearer bench-fleet-token"
EOT
best_cg_rps=0 best_cg_p99= best_h_rps=0 best_h_p99= best_fan_cg= best_fan_py=
better() { [[ -z $2 ]] || (( $(echo "$1 < $2" | bc -l) )); } # a b: a smaller (or b unset)
for (( r = 1; r <= ROUNDS; r++ )); do
  echo "round $r/$ROUNDS..." >&2
  run_wrk cg "$ring_url" -s "$work/poll.lua"
  read -r rps p99 bad err < <(parse_wrk "$work/wrk-cg.txt")
  (( bad == 0 && err == 0 )) || die "clamgate: $bad non-2xx/3xx, $err socket errors (see $work/wrk-cg.txt)"
  if (( $(echo "$rps > $best_cg_rps" | bc -l) )); then best_cg_rps=$rps best_cg_p99=$p99; fi
  run_wrk hello "http://127.0.0.1:$hport/rings/all.json"
  read -r rps p99 bad err < <(parse_wrk "$work/wrk-hello.txt")
  (( bad == 0 && err == 0 )) || die "hello: $bad non-2xx/3xx, $err socket errors"
  if (( $(echo "$rps > $best_h_rps" | bc -l) )); then best_h_rps=$rps best_h_p99=$p99; fi
  t=$(fanout clamgate "${auth[@]}" "${urls_cg[@]}")
  if better "$t" "$best_fan_cg"; then best_fan_cg=$t; fi
  t=$(fanout python "${urls_py[@]}")
  if better "$t" "$best_fan_py"; then best_fan_py=$t; fi
done

# --- the table -----------------------------------------------------------------
fail=0
row() { # what clamgate baseline ratio target pass
  printf '| %s | %s | %s | %s | %s | %s |\n' "$@"
  [[ $6 == PASS ]] || fail=1
}
verdict() { if (( $(echo "$1" | bc -l) )); then echo PASS; else echo MISS; fi; }
mib=$(echo "$total / 1048576" | bc)
poll_ratio=$(echo "scale=2; $best_cg_rps / $best_h_rps" | bc -l)
fan_ratio=$(echo "scale=2; $best_fan_cg / $best_fan_py" | bc -l)
need=$(echo "scale=2; $HOSTS / 60" | bc -l)
echo
echo "fleet bench: $HOSTS polling hosts (wrk -t$THREADS -c$HOSTS, $DURATION, conditional GET answered 304),"
echo "fan-out of ${mib} MiB ($FILES files) to $HOSTS_FANOUT hosts (curl), best of $ROUNDS rounds, $(nproc) cores"
echo
echo "| what | clamgate | baseline | ratio | target | |"
echo "| --- | --- | --- | --- | --- | --- |"
row "poll: requests/s (baseline benches/hello)" "$best_cg_rps" "$best_h_rps" "$poll_ratio" ">= 0.5" "$(verdict "$poll_ratio >= 0.5")"
row "poll: p99 ms (baseline benches/hello)" "$best_cg_p99" "$best_h_p99" "-" "< 10" "$(verdict "$best_cg_p99 < 10")"
row "fan-out: s until $HOSTS_FANOUT hosts have ${mib} MiB (baseline python3 -m http.server)" "$(printf %.2f "$best_fan_cg")" "$(printf %.2f "$best_fan_py")" "$fan_ratio" "<= 1.0" "$(verdict "$fan_ratio <= 1.0")"
echo
echo "at the shipped poll_interval (60s) $HOSTS hosts ask $need requests/s: $(echo "$best_cg_rps / $need" | bc)x headroom;"
echo "fan-out through clamgate: $(echo "scale=0; $total * $HOSTS_FANOUT / 1048576 / $best_fan_cg" | bc -l) MiB/s in all"
exit "$fail"
