#!/usr/bin/env bash
# Benchmark (not a test): mail throughput through a real Postfix, in one run,
# with no milter, with `clamgate milter` in gate mode and in scan mode, and
# with Debian's clamav-milter (scan mode), all against the same production
# clamd (daily-v1 promoted by a real `clamgate run`). smtp-source sends;
# the clock stops when Postfix has logged status=sent for every message,
# i.e. when smtp-sink (the next hop) has answered 250 to each of them.
# Targets: gate (milter or policy service) / no milter >= 0.95; clamgate
# scan / clamav-milter >= 1.0.
# Usage: benches/milter-smtp.sh
#   env SESSIONS=20 MESSAGES=2000 SIZE=4096 WARMUP=100 ROUNDS=1
#       MILTER_SOCKET=unix (as systemd/postfix/main.cf ships) or inet
#       MILTER_STAGE=rcpt (the default) or connect: where gate mode gates
#       VARIANTS="none gate policy scan clamav" (a subset runs only those; the
#       ratios need none, and clamav for the scan ratio)
#   (ROUNDS > 1 repeats the four variants in turn and reports the medians;
#    the release binary is looked up under $CARGO_TARGET_DIR, else target/)
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
SESSIONS=${SESSIONS:-20}
MESSAGES=${MESSAGES:-2000}
SIZE=${SIZE:-4096}
WARMUP=${WARMUP:-100}
ROUNDS=${ROUNDS:-1}
MILTER_SOCKET=${MILTER_SOCKET:-unix}
MILTER_STAGE=${MILTER_STAGE:-rcpt}
read -r -a names <<< "${VARIANTS:-none gate policy scan clamav}"
target=${CARGO_TARGET_DIR:-$PWD/target}

BENCH=smtp
source benches/lib.sh

echo "building (release) and fixtures..." >&2
cargo build --release --locked -q
bin=$target/release/clamgate
testdata/make-fixtures "$work/fx" >/dev/null

# --- clamgate daemon with daily-v1 live, production clamd, health -----------
seed_v1
start_daemon 300ms 2s
start_production
until_ok 60 "/readyz 200" ready

# --- the three milters -------------------------------------------------------
gate_addr=$(milter_addr milter-gate "$MILTER_SOCKET"); start_milter milter-gate gate "$gate_addr" "stage = \"$MILTER_STAGE\""; gate_pid=$pid
scan_addr=$(milter_addr milter-scan "$MILTER_SOCKET"); start_milter milter-scan scan "$scan_addr"
# The gate as a Postfix policy service: a gate-mode milter process that
# also serves policy_listen; Postfix uses check_policy_service, no milter.
pol_addr=$(milter_addr policy "$MILTER_SOCKET")
start_milter milter-policy gate "$(milter_addr milter-policy "$MILTER_SOCKET")" "policy_listen = \"$pol_addr\""; policy_pid=$pid
wait_milter "policy service" "$pol_addr"
cm_addr=$(milter_addr clamav-milter "$MILTER_SOCKET")
if [[ $cm_addr == inet:* ]]; then cm_socket="inet:${cm_addr##*:}@127.0.0.1"; else cm_socket=$cm_addr; fi
cat > "$work/clamav-milter.conf" <<EOT
MilterSocket $cm_socket
ClamdSocket unix:$work/prod/clamd.sock
Foreground yes
LogFile $work/clamav-milter.log
OnInfected Reject
OnFail Defer
AddHeader Replace
EOT
clamav-milter --config-file="$work/clamav-milter.conf" > "$work/clamav-milter.out" 2>&1 &
pids+=("$!")
wait_milter clamav-milter "$cm_addr"

at_least_sent() { (( $(postfix_sent "$1") >= $2 )); }
# send DIR PORT COUNT: smtp-source, then wait for COUNT more deliveries.
send() {
  local d=$1 port=$2 n=$3 base
  base=$(postfix_sent "$d")
  timeout 600 smtp-source -s "$SESSIONS" -m "$n" -l "$SIZE" -M client.example.org -f sender@example.org -t rcpt@example.net \
    "127.0.0.1:$port" > "$d/source.log" 2>&1 || { echo "smtp-source failed:" >&2; cat "$d/source.log" >&2; exit 1; }
  until_ok 600 "$n deliveries in $d" at_least_sent "$d" $(( base + n ))
}

# measure NAME MILTER -> REPLY: messages per second, through a Postfix of its own
measure() {
  local d t port
  d=$(mktemp -d "$work/pf-$1-XXXX")
  start_postfix "$d" "$2"; port=$REPLY
  send "$d" "$port" "$WARMUP"
  t=$(now)
  send "$d" "$port" "$MESSAGES"
  REPLY=$(echo "scale=3; $MESSAGES / ($(now) - $t)" | bc)
  if grep -q 'milter-reject' "$d/maillog"; then echo "warning: $1: Postfix logged milter-reject" >&2; fi
  postfix -c "$d/etc" stop >/dev/null 2>&1 || true
  stop_pid "$SINK_PID"
}

median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

declare -A milter=([none]="" [gate]="$gate_addr" [policy]="policy=$pol_addr" [scan]="$scan_addr" [clamav]="$cm_addr")
declare -A label=([none]="Postfix, no milter" [gate]="clamgate milter, gate mode" [policy]="clamgate gate, policy service" [scan]="clamgate milter, scan mode" [clamav]="clamav-milter (scan)")
declare -A rates=()
for (( r = 1; r <= ROUNDS; r++ )); do
  for n in "${names[@]}"; do
    echo "round $r: ${label[$n]}..." >&2
    measure "$n" "${milter[$n]}"
    echo "  $REPLY msg/s" >&2
    rates[$n]+="$REPLY "
  done
done

declare -A rate=()
for n in "${names[@]}"; do
  # shellcheck disable=SC2086
  rate[$n]=$(median ${rates[$n]})
done
printf '\n%d messages of %d bytes, %d sessions, %d round(s) (median), milters on %s sockets, %s cores\n' "$MESSAGES" "$SIZE" "$SESSIONS" "$ROUNDS" "$MILTER_SOCKET" "$(nproc)"
printf '%-32s %12s %14s\n' "variant" "msg/s" "vs no milter"
for n in "${names[@]}"; do
  printf '%-32s %12.1f %14.3f\n' "${label[$n]}" "${rate[$n]}" "$(echo "scale=3; ${rate[$n]} / ${rate[none]}" | bc)"
done
# CPU the gate milter used per SMTP session it served (utime + stime).
if [[ " ${names[*]} " == *" gate "* ]]; then
  read -r -a st < "/proc/$gate_pid/stat"
  sessions=$(( ROUNDS * (MESSAGES + WARMUP) ))
  printf '%-46s %8.1f us CPU per SMTP session (%d sessions)\n' "gate milter" "$(echo "scale=1; (${st[13]} + ${st[14]}) * 1000000 / $(getconf CLK_TCK) / $sessions" | bc)" "$sessions"
fi
if [[ " ${names[*]} " == *" policy "* ]]; then
  read -r -a st < "/proc/$policy_pid/stat"
  sessions=$(( ROUNDS * (MESSAGES + WARMUP) ))
  printf '%-46s %8.1f us CPU per SMTP session (%d sessions)\n' "policy service" "$(echo "scale=1; (${st[13]} + ${st[14]}) * 1000000 / $(getconf CLK_TCK) / $sessions" | bc)" "$sessions"
fi
verdict() { if (( $(echo "$1 >= $2" | bc) )); then echo PASS; else echo MISS; fi; }
if [[ -n ${rate[gate]:-} && -n ${rate[none]:-} ]]; then
  gate_ratio=$(echo "scale=3; ${rate[gate]} / ${rate[none]}" | bc)
  printf '%-46s %8.3f  target >= 0.95: %s\n' "gate ($MILTER_STAGE stage) / no milter" "$gate_ratio" "$(verdict "$gate_ratio" 0.95)"
fi
if [[ -n ${rate[policy]:-} && -n ${rate[none]:-} ]]; then
  policy_ratio=$(echo "scale=3; ${rate[policy]} / ${rate[none]}" | bc)
  printf '%-46s %8.3f  target >= 0.95: %s\n' "gate as policy service / no milter" "$policy_ratio" "$(verdict "$policy_ratio" 0.95)"
fi
if [[ -n ${rate[scan]:-} && -n ${rate[clamav]:-} ]]; then
  scan_ratio=$(echo "scale=3; ${rate[scan]} / ${rate[clamav]}" | bc)
  printf '%-46s %8.3f  target >= 1.0:  %s\n' "clamgate scan / clamav-milter" "$scan_ratio" "$(verdict "$scan_ratio" 1.0)"
fi
