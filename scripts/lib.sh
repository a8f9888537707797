# shellcheck shell=bash
# Shared by the bench scripts (through benches/lib.sh) and scripts/soak;
# sourced, not run, from the repository root. A scratch directory and the
# processes started in it, stopped and removed on any exit; bounded waits;
# clamd, `clamgate run`, `clamgate milter` and Postfix (scripts/postfix-instance)
# started the one way all of them use; the filler-signature daily.cud builder.
# Before sourcing: NAME (the script's name, for messages and the directory),
# optionally KEEP=1 (keep the directory). After: $work; pids=() to append the
# pids of children to; define on_cleanup() for teardown that goes first.
# Functions that start a process set $pid (or REPLY), never print it: a $(…)
# subshell would lose the child and leave it behind.

work=$(mktemp -d "/tmp/cg-$NAME-XXXXXX")
chmod 755 "$work" # Postfix's own processes (user postfix) work under it
pids=()
postfixes=() # instance directories started by start_postfix
cleanup() {
  local rc=$? i d
  trap - EXIT INT TERM
  if declare -F on_cleanup >/dev/null; then on_cleanup; fi
  for d in "${postfixes[@]}"; do timeout 30 postfix -c "$d/etc" stop >/dev/null 2>&1 || true; done
  for (( i = ${#pids[@]} - 1; i >= 0; i-- )); do stop_pid "${pids[i]}"; done
  if [[ -f $work/clamd.pid ]]; then stop_pid "$(cat "$work/clamd.pid")"; fi
  if [[ ${KEEP:-0} == 1 ]]; then echo "$NAME: kept $work" >&2; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

die() { echo "$NAME: $*" >&2; exit 1; }
# stop_pid PID [GRACE]: SIGTERM, a bounded wait, then SIGKILL; reaps a child.
stop_pid() {
  local p=$1 grace=${2:-5} i
  if kill -TERM "$p" 2>/dev/null; then
    for (( i = 0; i < grace * 20; i++ )); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$p" 2>/dev/null || true
  fi
  wait "$p" 2>/dev/null || true
}
# until_ok SECONDS WHAT CMD...: retries CMD every 50 ms; 1 after SECONDS.
until_ok() {
  local limit=$1 what=$2; shift 2
  local deadline=$(( $(date +%s) + limit ))
  until "$@"; do
    if (( $(date +%s) > deadline )); then echo "$NAME: gave up waiting ${limit}s for $what" >&2; return 1; fi
    sleep 0.05
  done
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
socket_exists() { [[ -S $1 ]]; }

# --- clamd ----------------------------------------------------------------------
clamd_cmd() { printf 'z%s\0' "$2" | timeout 5 socat -t 3 - "UNIX-CONNECT:$1" 2>/dev/null | tr -d '\0'; } # SOCKET CMD
ping_ok() { [[ $(clamd_cmd "$1" PING) == PONG ]]; }
db_version() { clamd_cmd "$1" VERSION | cut -d/ -f2; } # the daily version clamd has loaded
# start_clamd DIR SOCKET CONF [CONF_LINE...]: a bare clamd on DIR, its log
# appended to CONF.log; sets $pid (a child of this shell, so `wait` reaps it).
start_clamd() {
  local dir=$1 sock=$2 conf=$3; shift 3
  printf '%s\n' "Foreground yes" "LocalSocket $sock" "DatabaseDirectory $dir" "TemporaryDirectory $work" \
    "SelfCheck 0" "ConcurrentDatabaseReload yes" "$@" > "$conf"
  rm -f "$sock"
  /usr/sbin/clamd --config-file="$conf" >> "$conf.log" 2>&1 &
  pid=$!
}
# start_production [CONF_LINE...]: production clamd on the live release at
# $work/prod/clamd.sock; 1 if no PONG in 120 s. Its pid is in $work/clamd.pid,
# not in pids (it may be killed and started again); cleanup stops it.
start_production() {
  start_clamd "$work/state/current" "$work/prod/clamd.sock" "$work/prod/clamd.conf" "$@"
  echo "$pid" > "$work/clamd.pid"
  until_ok 120 "production clamd PONG" ping_ok "$work/prod/clamd.sock"
}

# build_daily VERSION SIGS OUT: an unsigned daily.cud of that version holding
# the good set's hashes (clam.exe's among them) plus filler MD5 signatures
# (random-looking, the same for the same VERSION) up to SIGS.
build_daily() {
  local version=$1 sigs=$2 out=$3 b
  b=$(mktemp -d "$work/build.XXXXXX")
  mkdir -p "$b/empty"
  cp testdata/sets/good/clamgate.hdb "$b/daily.hdb"
  awk -v n="$sigs" -v v="$version" 'BEGIN { srand(v); for (i = 1; i < n; i++) { h = ""
      for (j = 0; j < 8; j++) h = h sprintf("%04x", int(rand() * 65536))
      printf "%s:%d:Clamgate.Filler.V%d.%d\n", h, 1000 + i % 5000, v, i } }' >> "$b/daily.hdb"
  echo "clamgate test fixture, not a real signature database" > "$b/COPYING"
  (cd "$b" && echo clamgate | sigtool --build=daily.cud --unsigned --cvd-version="$version" \
      --no-cdiff --datadir="$b/empty" >/dev/null 2>"$b/sigtool.err") || { cat "$b/sigtool.err" >&2; return 1; }
  mv "$b/daily.cud" "$out"
  rm -rf "$b"
}

# --- clamgate -------------------------------------------------------------------
# CLAMGATE_LOG (default warn) is the log level of both; $bin the binary.
# shellcheck disable=SC2154 # bin: set by the caller
# start_daemon SETTLE PROBE_INTERVAL [TOML] [PREFIX...]: `clamgate run` on
# $work/incoming (where the caller has put the first update), production at
# $work/prod/clamd.sock, health on 127.0.0.1:$health (a free port), TOML
# added to the top level of $work/clamgate.toml, PREFIX before the command
# (e.g. taskset), CLAMD_TOML (env) added to [clamd] (managed mode). Returns
# once the first update is promoted; sets $pid (in pids).
start_daemon() {
  local settle=$1 probe=$2 extra=${3:-}; shift 2; shift $(( $# > 0 ))
  health=$(free_port)
  mkdir -p "$work/incoming" "$work/prod"
  # The shipped policy, named: a named policy must exist.
  cp policies/default.toml "$work/policy.toml"
  cat > "$work/clamgate.toml" <<EOT
state_dir = "$work/state"
incoming_dir = "$work/incoming"
corpus_dir = "$work/fx/corpus"
policy = "$work/policy.toml"
settle = "$settle"
$extra
[clamd]
socket = "$work/prod/clamd.sock"
${CLAMD_TOML:-}
[health]
listen = "127.0.0.1:$health"
probe_interval = "$probe"
EOT
  NO_COLOR=1 CLAMGATE_LOG=${CLAMGATE_LOG:-warn} "$@" "$bin" run --config "$work/clamgate.toml" > "$work/daemon.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  until_ok 120 "the first promotion" grep -qs '"promotion.done"' "$work/state/journal.jsonl" || { cat "$work/daemon.log" >&2; return 1; }
}
ready() { [[ $(curl -s -m 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$health/readyz") == 200 ]]; }
# milter_addr NAME inet|unix: an address for a milter, in Postfix's syntax.
milter_addr() {
  if [[ $2 == unix ]]; then echo "unix:$work/$1.sock"; else echo "inet:127.0.0.1:$(free_port)"; fi
}
# wait_milter WHAT ADDR: bounded wait until it listens; Postfix (user
# postfix) must be able to connect to a unix socket.
wait_milter() {
  if [[ $2 == unix:* ]]; then
    until_ok 30 "$1" socket_exists "${2#unix:}" && chmod 666 "${2#unix:}"
  else
    until_ok 30 "$1" listening "${2##*:}"
  fi
}
# start_milter NAME MODE ADDR [LINES]: `clamgate milter` (the daemon's config
# plus a [milter] section, with LINES added, in $work/NAME.toml, log
# $work/NAME.log); sets $pid (in pids).
start_milter() {
  { cat "$work/clamgate.toml"; printf '[milter]\nlisten = "%s"\nmetrics_listen = "127.0.0.1:%s"\nhealth_url = "http://127.0.0.1:%s/readyz"\nmode = "%s"\n%s\n' "$3" "$(free_port)" "$health" "$2" "${4:-}"; } > "$work/$1.toml"
  NO_COLOR=1 CLAMGATE_LOG=${CLAMGATE_LOG:-warn} "$bin" milter --config "$work/$1.toml" > "$work/$1.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  wait_milter "clamgate milter ($1)" "$3"
}

# --- Postfix --------------------------------------------------------------------
# start_postfix DIR MILTER [SINK_ARG...]: a Postfix instance in DIR (see
# scripts/postfix-instance; MILTER may be empty) relaying to an smtp-sink
# (SINK_ARGs added, output DIR/sink.log); stopped by cleanup. Sets REPLY (the
# smtpd port) and SINK_PID (in pids).
start_postfix() {
  local d=$1 milter=$2 smtpd sink; shift 2
  smtpd=$(free_port); sink=$(free_port)
  scripts/postfix-instance "$d" "$smtpd" "$sink" ${milter:+"$milter"} || return 1
  smtp-sink -u postfix "$@" "127.0.0.1:$sink" 256 > "$d/sink.log" 2>&1 &
  SINK_PID=$!
  pids+=("$SINK_PID")
  until_ok 30 "smtp-sink" listening "$sink" || return 1
  postfixes+=("$d")
  # postfix prints its errors only to a terminal: script(1) provides one.
  timeout 60 script -qec "postfix -c $d/etc start" /dev/null > "$d/start.log" 2>&1 || { cat "$d/start.log" "$d/maillog" >&2; return 1; }
  until_ok 30 "Postfix smtpd" listening "$smtpd"
  REPLY=$smtpd
}
postfix_sent() { local n; n=$(grep -c ' status=sent ' "$1/maillog" 2>/dev/null) || true; echo "${n:-0}"; } # DIR: deliveries
