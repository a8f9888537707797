#!/usr/bin/env bash
# Benchmark (not a test): mail throughput through a real Postfix, in one run,
# with no milter, with `clamgate milter` in gate mode and in scan mode, and
# with Debian's clamav-milter (scan mode), all against the same production
# clamd (daily-v1 promoted by a real `clamgate run`). smtp-source sends;
# the clock stops when Postfix has logged status=sent for every message,
# i.e. when smtp-sink (the next hop) has answered 250 to each of them.
# Targets: gate / no milter >= 0.95; clamgate scan / clamav-milter >= 1.0.
# Usage: benches/milter-smtp.sh
#   env SESSIONS=20 MESSAGES=2000 SIZE=4096 WARMUP=100 ROUNDS=1
#       MILTER_SOCKET=inet (as systemd/postfix/main.cf ships) or unix
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
MILTER_SOCKET=${MILTER_SOCKET:-inet}
target=${CARGO_TARGET_DIR:-$PWD/target}

BENCH=smtp
source benches/lib.sh
chmod 755 "$work" # Postfix's own processes (user postfix) work under it
instances=()
on_cleanup() {
  for d in "${instances[@]}"; do postfix -c "$d/etc" stop >/dev/null 2>&1 || true; done
}

# until_ok SECONDS WHAT CMD...: bounded wait for a condition.
until_ok() {
  local limit=$1 what=$2; shift 2
  local deadline=$(( $(date +%s) + limit ))
  until "$@"; do
    if (( $(date +%s) > deadline )); then echo "gave up waiting for $what" >&2; exit 1; fi
    sleep 0.05
  done
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ready() { [[ $(curl -s -m 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/readyz") == 200 ]]; }
sent() { local n; n=$(grep -c ' status=sent ' "$1/maillog" 2>/dev/null) || true; echo "${n:-0}"; }
at_least_sent() { (( $(sent "$1") >= $2 )); }

echo "building (release) and fixtures..." >&2
cargo build --release --locked -q
bin=$target/release/clamgate
testdata/make-fixtures "$work/fx" >/dev/null

# --- clamgate daemon with daily-v1 live, production clamd, health -----------
health=$(free_port)
seed_daemon
cat >> "$work/clamgate.toml" <<EOT
settle = "300ms"
[clamd]
socket = "$work/prod/clamd.sock"
[health]
listen = "127.0.0.1:$health"
probe_interval = "2s"
EOT
CLAMGATE_LOG=warn "$bin" run --config "$work/clamgate.toml" > "$work/daemon.log" 2>&1 &
pids+=("$!")
promoted() { grep -qs '"promotion.done"' "$work/state/journal.jsonl"; }
until_ok 120 "promotion of daily-v1" promoted
printf 'Foreground yes\nLocalSocket %s\nDatabaseDirectory %s\nTemporaryDirectory %s\nSelfCheck 0\nConcurrentDatabaseReload yes\n' \
  "$work/prod/clamd.sock" "$work/state/current" "$work" > "$work/prod/clamd.conf"
/usr/sbin/clamd --config-file="$work/prod/clamd.conf" > "$work/prod/clamd.log" 2>&1 &
pids+=("$!")
until_ok 120 "production clamd" ping_ok "$work/prod/clamd.sock"
until_ok 60 "/readyz 200" ready "$health"

# --- the three milters -------------------------------------------------------
exists() { [[ -S $1 ]]; }
# milter_addr NAME -> the address a milter listens on, in Postfix's syntax
milter_addr() {
  if [[ $MILTER_SOCKET == unix ]]; then echo "unix:$work/$1.sock"; else echo "inet:127.0.0.1:$(free_port)"; fi
}
# Functions that start processes return through REPLY, never through $(…):
# a subshell would lose their pids and leave the processes behind.
# wait_milter NAME ADDR: bounded wait until it listens; Postfix (user
# postfix) must be able to connect to a unix socket.
wait_milter() {
  if [[ $2 == unix:* ]]; then
    until_ok 30 "$1" exists "${2#unix:}"
    chmod 666 "${2#unix:}"
  else
    until_ok 30 "$1" listening "${2##*:}"
  fi
}
start_clamgate_milter() { # mode -> REPLY: address
  local addr; addr=$(milter_addr "milter-$1")
  { cat "$work/clamgate.toml"; printf '[milter]\nlisten = "%s"\nhealth_url = "http://127.0.0.1:%s/readyz"\nmode = "%s"\n' "$addr" "$health" "$1"; } > "$work/milter-$1.toml"
  CLAMGATE_LOG=warn "$bin" milter --config "$work/milter-$1.toml" > "$work/milter-$1.log" 2>&1 &
  pids+=("$!")
  wait_milter "clamgate milter ($1)" "$addr"
  REPLY=$addr
}
start_clamgate_milter gate; gate_addr=$REPLY
start_clamgate_milter scan; scan_addr=$REPLY
cm_addr=$(milter_addr clamav-milter)
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

# --- one isolated Postfix per measurement (as tests/support/postfix.rs) ------
start_postfix() { # dir milter-or-empty -> REPLY: smtpd port, SINK_PID
  local d=$1 milter=$2 smtpd sink
  smtpd=$(free_port); sink=$(free_port)
  mkdir -p "$d/etc" "$d/queue"
  cat > "$d/etc/main.cf" <<EOT
compatibility_level = 3.6
queue_directory = $d/queue
data_directory = $d/data
maillog_file = $d/maillog
maillog_file_prefixes = $d
myhostname = mx.clamgate.test
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_peername_lookup = no
relayhost = [127.0.0.1]:$sink
smtp_dns_support_level = disabled
EOT
  if [[ -n $milter ]]; then # the shipped lines, smtpd_milters pointed here
    grep -v '^#' systemd/postfix/main.cf | sed "s|^smtpd_milters = .*|smtpd_milters = $milter|" >> "$d/etc/main.cf"
  fi
  {
    echo "127.0.0.1:$smtpd inet n - n - - smtpd"
    for s in "pickup unix n - n 60 1 pickup" "cleanup unix n - n - 0 cleanup" "qmgr unix n - n 300 1 qmgr" \
      "rewrite unix - - n - - trivial-rewrite" "bounce unix - - n - 0 bounce" "defer unix - - n - 0 bounce" \
      "trace unix - - n - 0 bounce" "verify unix - - n - 1 verify" "flush unix n - n 1000? 0 flush" \
      "proxymap unix - - n - - proxymap" "smtp unix - - n - - smtp" "relay unix - - n - - smtp" \
      "showq unix n - n - - showq" "error unix - - n - - error" "retry unix - - n - - error" \
      "discard unix - - n - - discard" "anvil unix - - n - 1 anvil" "scache unix - - n - 1 scache" \
      "postlog unix-dgram n - n - 1 postlogd"; do echo "$s"; done
  } > "$d/etc/master.cf"
  smtp-sink -u postfix "127.0.0.1:$sink" 256 > "$d/sink.log" 2>&1 &
  SINK_PID=$!
  pids+=("$SINK_PID")
  until_ok 30 "smtp-sink" listening "$sink"
  instances+=("$d")
  # postfix prints its errors only to a terminal: script(1) provides one.
  timeout 60 script -qec "postfix -c $d/etc start" /dev/null > "$d/start.log" 2>&1 || { cat "$d/start.log" "$d/maillog" >&2; exit 1; }
  until_ok 30 "Postfix smtpd" listening "$smtpd"
  REPLY=$smtpd
}

# send DIR PORT COUNT: smtp-source, then wait for COUNT more deliveries.
send() {
  local d=$1 port=$2 n=$3 base
  base=$(sent "$d")
  timeout 600 smtp-source -s "$SESSIONS" -m "$n" -l "$SIZE" -M client.example.org -f sender@example.org -t rcpt@example.net \
    "127.0.0.1:$port" > "$d/source.log" 2>&1 || { echo "smtp-source failed:" >&2; cat "$d/source.log" >&2; exit 1; }
  until_ok 600 "$n deliveries in $d" at_least_sent "$d" $(( base + n ))
}

# measure NAME MILTER -> REPLY: messages per second
measure() {
  local d t port
  d=$(mktemp -d "$work/pf-$1-XXXX")
  chmod 755 "$d"
  start_postfix "$d" "$2"; port=$REPLY
  send "$d" "$port" "$WARMUP"
  t=$(now)
  send "$d" "$port" "$MESSAGES"
  REPLY=$(echo "scale=3; $MESSAGES / ($(now) - $t)" | bc)
  if grep -q 'milter-reject' "$d/maillog"; then echo "warning: $1: Postfix logged milter-reject" >&2; fi
  postfix -c "$d/etc" stop >/dev/null 2>&1 || true
  kill "$SINK_PID" 2>/dev/null || true
  wait "$SINK_PID" 2>/dev/null || true
}

median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

names=(none gate scan clamav)
declare -A milter=([none]="" [gate]="$gate_addr" [scan]="$scan_addr" [clamav]="$cm_addr")
declare -A label=([none]="Postfix, no milter" [gate]="clamgate milter, gate mode" [scan]="clamgate milter, scan mode" [clamav]="clamav-milter (scan)")
declare -A rates=()
for (( r = 1; r <= ROUNDS; r++ )); do
  for n in "${names[@]}"; do
    echo "round $r: ${label[$n]}..." >&2
    measure "$n" "${milter[$n]}"
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
gate_ratio=$(echo "scale=3; ${rate[gate]} / ${rate[none]}" | bc)
scan_ratio=$(echo "scale=3; ${rate[scan]} / ${rate[clamav]}" | bc)
verdict() { if (( $(echo "$1 >= $2" | bc) )); then echo PASS; else echo MISS; fi; }
printf '%-46s %8.3f  target >= 0.95: %s\n' "gate / no milter" "$gate_ratio" "$(verdict "$gate_ratio" 0.95)"
printf '%-46s %8.3f  target >= 1.0:  %s\n' "clamgate scan / clamav-milter" "$scan_ratio" "$(verdict "$scan_ratio" 1.0)"
