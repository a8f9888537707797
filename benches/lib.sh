# shellcheck shell=bash
# Shared by the bench scripts (sourced, not run): scripts/lib.sh (scratch
# directory and cleanup, bounded waits, clamd, clamgate and Postfix started
# the one way the soak starts them too, the filler-signature daily.cud) and
# what only the benches use. Before sourcing: BENCH (the script's name).

NAME=$BENCH
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

now() { date +%s.%N; }
min() { printf '%s\n' "$@" | sort -g | head -1; }
# build_with_fixtures: the release binary (sets $bin) and the fixtures in $work/fx.
build_with_fixtures() {
  echo "building (release) and fixtures..." >&2
  cargo build --release --locked -q
  testdata/make-fixtures "$work/fx" >/dev/null
  bin=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release/clamgate
  [[ -x $bin ]] || die "$bin: not built"
}
# seed_v1: incoming holding daily-v1 from the fixtures in $work/fx, for start_daemon.
seed_v1() { mkdir -p "$work/incoming" && cp "$work/fx/sets/daily-v1/daily.cud" "$work/incoming/"; }
