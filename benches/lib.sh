# Shared by the bench scripts (sourced, not run): a scratch directory and the
# processes started in it, removed and killed on any exit; small helpers; and
# the 1,000,000-signature candidate the 1M benchmarks load.
# Before sourcing: BENCH (the script's name, for messages). After: $work,
# pids=() to append child pids to; define on_cleanup() for more teardown.

work=$(mktemp -d "/tmp/cg-$BENCH-XXXXXX")
pids=()
cleanup() {
  if declare -F on_cleanup >/dev/null; then on_cleanup; fi
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now() { date +%s.%N; }
die() { echo "$BENCH: $*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ping_ok() { [[ $(printf 'zPING\0' | socat -t 2 - "UNIX-CONNECT:$1" 2>/dev/null | tr -d '\0') == PONG ]]; }

# seed_daemon: incoming holding daily-v1 (from the fixtures in $work/fx) and
# the top of $work/clamgate.toml; the caller appends the rest.
seed_daemon() {
  mkdir -p "$work/incoming" "$work/prod"
  cp "$work/fx/sets/daily-v1/daily.cud" "$work/incoming/"
  cat > "$work/clamgate.toml" <<EOT
state_dir = "$work/state"
incoming_dir = "$work/incoming"
corpus_dir = "$work/fx/corpus"
policy = "$work/none.toml"
EOT
}

# start_clamd DIR SOCKET CONF: a bare clamd on DIR; sets $pid (a child of
# this shell, so `wait` reaps it).
start_clamd() {
  printf 'Foreground yes\nLocalSocket %s\nDatabaseDirectory %s\nTemporaryDirectory %s\nSelfCheck 0\nConcurrentDatabaseReload yes\n' "$2" "$1" "$work" > "$3"
  /usr/sbin/clamd --config-file="$3" > "$3.log" 2>&1 &
  pid=$!
}

# build_big_daily SIGS OUT: OUT/daily.cud, version 2, unsigned: the good
# set's hashes plus filler MD5 signatures up to SIGS.
build_big_daily() {
  local b=$work/build-big
  mkdir -p "$b/empty" "$2"
  cp testdata/sets/good/clamgate.hdb "$b/daily.hdb"
  python3 - "$1" >> "$b/daily.hdb" <<'PY'
import sys, hashlib
n = int(sys.argv[1])
out = sys.stdout
for i in range(1, n):
    out.write("%s:%d:Clamgate.Filler.%d\n" % (hashlib.md5(b"bench-%d" % i).hexdigest(), 1000 + i % 5000, i))
PY
  echo "bench fixture" > "$b/COPYING"
  (cd "$b" && echo clamgate | sigtool --build=daily.cud --unsigned --cvd-version=2 --no-cdiff --datadir="$b/empty" >/dev/null 2>&1)
  mv "$b/daily.cud" "$2/daily.cud"
  rm -rf "$b"
}
