#!/usr/bin/env bash
# `make demo`: the RATIO ablation in miniature, end to end, on this machine.
#   1. starts BUILD_DIR/bin/ratiod on a temporary database and a free loopback port;
#   2. submits the `demo` preset (real training on the fortunes corpus; CPU, or the GPU if present);
#   3. prints the dashboard URL and shows live progress;
#   4. prints the results table with verdicts and stops the daemon cleanly.
# RATIO_DEMO_KEEP=1 keeps the temporary directory (database, logs, checkpoints) for inspection.
set -euo pipefail

BUILD=${1:?usage: scripts/demo.sh BUILD_DIR (make demo passes it)}
BIN=$(cd "$BUILD/bin" 2>/dev/null && pwd) || { echo "demo: no $BUILD/bin; build first with 'make build'" >&2; exit 2; }
for tool in ratiod ratio ratio-worker; do
  if [[ ! -x "$BIN/$tool" ]]; then
    echo "demo: $BIN/$tool is missing; build with LibTorch ('make build', RATIO_WITH_TORCH=ON)" >&2
    exit 2
  fi
done

WORK=$(mktemp -d -t ratio-demo.XXXXXX)
DAEMON_PID=""

stop_daemon() {
  [[ -n "$DAEMON_PID" ]] || return 0
  echo "demo: stopping ratiod (pid $DAEMON_PID)"
  kill -TERM "$DAEMON_PID" 2>/dev/null || true
  wait "$DAEMON_PID" 2>/dev/null || true
  DAEMON_PID=""
}

# shellcheck disable=SC2317  # called through the EXIT trap
cleanup() {
  stop_daemon
  if [[ "${RATIO_DEMO_KEEP:-0}" == 1 ]]; then
    echo "demo: kept $WORK (ratio.db, ratiod.log, work/)"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'echo; echo "demo: interrupted"; exit 130' INT TERM

# A loopback port nobody answers on (bash's /dev/tcp connect fails on a closed port).
free_port() {
  local port
  for _ in $(seq 1 100); do
    port=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  echo "demo: no free loopback port found" >&2
  return 1
}

PORT=$(free_port)
export RATIO_SERVER="http://127.0.0.1:$PORT"
"$BIN/ratiod" --db "$WORK/ratio.db" --listen "127.0.0.1:$PORT" --workdir "$WORK/work" >"$WORK/ratiod.log" 2>&1 &
DAEMON_PID=$!

# Wait until it answers (exit 3 = not reachable yet).
for _ in $(seq 1 100); do
  if "$BIN/ratio" status >/dev/null 2>&1; then break; fi
  if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
    DAEMON_PID=""
    echo "demo: ratiod exited at startup; its log:" >&2
    cat "$WORK/ratiod.log" >&2
    exit 1
  fi
  sleep 0.2
done
"$BIN/ratio" status >/dev/null || { echo "demo: ratiod did not answer on $RATIO_SERVER; log in $WORK/ratiod.log" >&2; exit 1; }

echo "demo: ratiod is up; dashboard: $RATIO_SERVER/"
echo "demo: (while it runs, try: RATIO_SERVER=$RATIO_SERVER $BIN/ratio status)"
echo "demo: submitting the demo preset"
MATRIX=$("$BIN/ratio" submit --preset demo | tail -n 1)

WATCH_CODE=0
"$BIN/ratio" status "$MATRIX" --watch --interval 1 || WATCH_CODE=$?
echo
"$BIN/ratio" results "$MATRIX"
echo "demo: the matrix took ${SECONDS}s from start to results"
if [[ $WATCH_CODE -ne 0 ]]; then
  echo "demo: some jobs did not succeed (ratio exit code $WATCH_CODE); see 'ratio logs JOB' while the daemon runs," >&2
  echo "      or rerun with RATIO_DEMO_KEEP=1 and read $WORK/work" >&2
fi
stop_daemon
exit "$WATCH_CODE"
