#!/usr/bin/env bash
# `make bench`: builds in release mode, starts everything on loopback ports,
# runs the load suite against Switchboard, the two baselines (B1 wire limit,
# B2 architecture limit) and the Socket.IO + Redis peer with the same
# scenario shapes, prints the table and writes loadtest/results/<name>.{md,json}.
# Everything it starts is killed on exit.
#
# Sizes (defaults finish in a few minutes on 2 cores):
#   BENCH_CONNECTIONS=10000       connect: Switchboard connections (100000 for the big run)
#   BENCH_PEER_CONNECTIONS=10000  connect: B1/B2/Socket.IO connections (capped at the above)
#   BENCH_HOLD=3                  connect: seconds to hold
#   BENCH_PAIRS=250 BENCH_PAIR_RATE=4          pairs: couples, msgs/s per side
#   BENCH_FANOUT_MEMBERS=1000 BENCH_FANOUT_RATE=100
#   BENCH_RTT_CONNECTIONS=64 BENCH_RTT_WINDOW=4   rtt: closed loop, 256 outstanding
#   BENCH_REPEAT=1                rounds of pairs/fanout/rtt (figures are medians)
#   BENCH_DURATION=8              seconds of traffic per pairs/fanout/rtt run
#   BENCH_MM_WAITING=100000 BENCH_MM_COMPATIBLE=20000   matchmaking (Switchboard
#                                 only): tickets waiting; compatible ones matched for tickets/s
#   BENCH_DM_USERS=500 BENCH_DM_ROOMS=20   dm (Switchboard only): users each in
#                                 that many rooms, distinct then shared; its RSS
#                                 figures want a fresh gateway: BENCH_SCENARIOS=dm
#   BENCH_RECONNECT_CLIENTS=10000 BENCH_RECONNECT_ROOMS=100   reconnect (Switchboard
#                                 only): clients over two gateways of their own, one SIGKILLed
#   BENCH_RECONNECT_RATE=2 BENCH_RECONNECT_BACKOFF_MS=1000   msgs/s per room; the
#                                 killed clients' uniform reconnect jitter
#   BENCH_SCENARIOS=connect,pairs,fanout,rtt,matchmaking,reconnect   (and/or dm)
#   BENCH_TARGETS=switchboard,b1,b2,socketio
#   BENCH_NAME=<date>-<nproc>core BENCH_OUT_DIR=loadtest/results
#   BENCH_NOTE="free text recorded in the report"
#   BENCH_SKIP_BUILD=1            reuse the release binaries
# One process can hold only `ulimit -n` sockets; when BENCH_CONNECTIONS needs
# more, extra gateways are started for `connect` and the load generator
# spreads its clients over several processes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

N=${BENCH_CONNECTIONS:-10000}
PEER_N=${BENCH_PEER_CONNECTIONS:-10000}
HOLD=${BENCH_HOLD:-3}
PAIRS=${BENCH_PAIRS:-250}
PAIR_RATE=${BENCH_PAIR_RATE:-4}
FAN_M=${BENCH_FANOUT_MEMBERS:-1000}
FAN_RATE=${BENCH_FANOUT_RATE:-100}
RTT_C=${BENCH_RTT_CONNECTIONS:-64}
RTT_W=${BENCH_RTT_WINDOW:-4}
REPEAT=${BENCH_REPEAT:-1}
DURATION=${BENCH_DURATION:-8}
MM_WAITING=${BENCH_MM_WAITING:-100000}
MM_COMPATIBLE=${BENCH_MM_COMPATIBLE:-20000}
DM_USERS=${BENCH_DM_USERS:-500}
DM_ROOMS=${BENCH_DM_ROOMS:-20}
RC_CLIENTS=${BENCH_RECONNECT_CLIENTS:-10000}
RC_ROOMS=${BENCH_RECONNECT_ROOMS:-100}
RC_RATE=${BENCH_RECONNECT_RATE:-2}
RC_BACKOFF=${BENCH_RECONNECT_BACKOFF_MS:-1000}
SCENARIOS=${BENCH_SCENARIOS:-connect,pairs,fanout,rtt,matchmaking,reconnect}
TARGETS=${BENCH_TARGETS:-switchboard,b1,b2,socketio}
NAME=${BENCH_NAME:-$(date -u +%Y-%m-%d)-$(nproc)core}
OUT_DIR=${BENCH_OUT_DIR:-loadtest/results}
NOTE=${BENCH_NOTE:-}

say() { printf '\033[1m[bench]\033[0m %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
want() { [[ ",$TARGETS," == *",$1,"* ]]; }

# --- limits ---------------------------------------------------------------
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT=$(ulimit -n)
say "open files limit: $FD_LIMIT; ephemeral ports: $(sysctl -n net.ipv4.ip_local_port_range 2>/dev/null | tr '\t' '-')"
PER_PROC=$(( FD_LIMIT > 1000 ? FD_LIMIT - 500 : FD_LIMIT / 2 ))
GATEWAYS=$(( (N + PER_PROC - 1) / PER_PROC ))
(( GATEWAYS < 1 )) && GATEWAYS=1
if (( GATEWAYS > 1 )); then
  say "$N connections exceed one process's limit ($PER_PROC): connect will use $GATEWAYS gateway processes"
fi

# --- dependencies ---------------------------------------------------------
missing=()
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if (( ${#missing[@]} )); then
  if [[ $(id -u) -eq 0 ]]; then
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    die "${missing[*]} missing: apt-get install ${missing[*]}"
  fi
fi
if want socketio; then
  command -v node >/dev/null && command -v npm >/dev/null || die "node and npm are needed for the Socket.IO peer"
fi

# --- build ------------------------------------------------------------------
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ -z ${BENCH_SKIP_BUILD:-} ]]; then
  say "building (release)"
  cargo build --release -q -p switchboard-gateway -p switchboard-workers -p switchboard-loadtest
fi
BIN="$TARGET_DIR/release"
for b in switchboard-gateway switchboard-workers switchboard-loadtest; do
  [[ -x $BIN/$b ]] || die "$BIN/$b missing (build failed?)"
done
if want socketio; then
  (cd loadtest/peers/socketio && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
    || die "npm ci failed in loadtest/peers/socketio"
fi

# --- processes ------------------------------------------------------------
RUN_DIR=$(mktemp -d -t sb-bench.XXXXXX)
PIDS=()
cleanup() {
  local rc=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  # Gateways close every client (1012) before exiting: give them time.
  for _ in $(seq 1 100); do
    local alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    (( alive )) || break
    sleep 0.1
  done
  { for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    wait; } 2>/dev/null || true
  if (( rc != 0 )); then
    say "failed (exit $rc); server logs kept in $RUN_DIR"
  else
    rm -rf "$RUN_DIR"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
NEXT_PORT=24000
free_port() { # sets the variable named $1 to a free loopback port
  while port_busy "$NEXT_PORT"; do NEXT_PORT=$((NEXT_PORT + 1)); done
  printf -v "$1" '%s' "$NEXT_PORT"
  NEXT_PORT=$((NEXT_PORT + 1))
}
wait_port() {
  local port=$1 pid=$2 what=$3
  for _ in $(seq 1 200); do
    port_busy "$port" && return 0
    kill -0 "$pid" 2>/dev/null || die "$what exited; see $RUN_DIR"
    sleep 0.1
  done
  die "$what did not listen on $port"
}
readyz() { # prints the status line of GET /readyz on port $1
  ( exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'GET /readyz HTTP/1.0\r\n\r\n' >&3
    line=""; read -r -t 2 line <&3 || true
    echo "$line" ) 2>/dev/null || true
}
wait_ready() {
  local port=$1 pid=$2
  for _ in $(seq 1 200); do
    [[ $(readyz "$port") == *" 200 "* ]] && return 0
    kill -0 "$pid" 2>/dev/null || die "gateway exited; see $RUN_DIR"
    sleep 0.1
  done
  die "gateway on $port not ready"
}
start() { # name, then the command; sets LAST_PID
  local name=$1; shift
  "$@" >"$RUN_DIR/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

SUITE_ARGS=()
export SB_LOG__FILTER=warn SB_LOG__FORMAT=pretty
# Abuse limits off: the load generator drives each user far faster than a
# person would, and the peers run without rate limits too.
export SB_LIMITS__ENABLED=false

if want switchboard; then
  free_port NATS_PORT; free_port REDIS_PORT
  start nats nats-server -a 127.0.0.1 -p "$NATS_PORT"; NATS_PID=$LAST_PID
  start redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --dir "$RUN_DIR"; REDIS_PID=$LAST_PID
  wait_port "$NATS_PORT" "$NATS_PID" nats-server
  wait_port "$REDIS_PORT" "$REDIS_PID" redis-server
  export SB_NATS__URL="nats://127.0.0.1:$NATS_PORT" SB_REDIS__URL="redis://127.0.0.1:$REDIS_PORT"
  # The matchmaking service (which needs rooms for match rooms) only when
  # its scenario runs, so the other scenarios measure the rooms worker alone.
  SERVICES=(rooms)
  [[ ",$SCENARIOS," == *",matchmaking,"* ]] && SERVICES=(matchmaking rooms)
  start workers "$BIN/switchboard-workers" "${SERVICES[@]}"; WORKERS_PID=$LAST_PID
  GW_URLS=(); GW_PIDS=()
  for g in $(seq 1 "$GATEWAYS"); do
    free_port port
    SB_GATEWAY__LISTEN="127.0.0.1:$port" start "gateway$g" "$BIN/switchboard-gateway"
    GW_URLS+=("ws://127.0.0.1:$port/ws"); GW_PIDS+=("$LAST_PID")
    wait_ready "$port" "$LAST_PID"
  done
  sleep 0.5
  kill -0 "$WORKERS_PID" 2>/dev/null || die "workers (${SERVICES[*]}) exited; see $RUN_DIR/workers.log"
  SUITE_ARGS+=(--sb-url "${GW_URLS[0]}" --sb-front "${GW_PIDS[0]}"
               --sb-redis-url "redis://127.0.0.1:$REDIS_PORT"
               --sb-back "$WORKERS_PID,$NATS_PID,$REDIS_PID"
               # `reconnect` starts two gateways (one to kill) and a presence
               # worker of its own against this NATS and Redis.
               --sb-gateway-bin "$BIN/switchboard-gateway"
               --sb-workers-bin "$BIN/switchboard-workers"
               --sb-nats-url "nats://127.0.0.1:$NATS_PORT")
  if (( GATEWAYS > 1 )); then
    SUITE_ARGS+=(--sb-connect-urls "$(IFS=,; echo "${GW_URLS[*]}")"
                 --sb-connect-front "$(IFS=,; echo "${GW_PIDS[*]}")")
  fi
  say "switchboard: gateway(s) ${GW_URLS[*]}, NATS :$NATS_PORT, Redis :$REDIS_PORT"
  unset SB_NATS__URL SB_REDIS__URL
fi

if want b1; then
  free_port B1_PORT
  start b1 "$BIN/switchboard-loadtest" b1-server --listen "127.0.0.1:$B1_PORT"; B1_PID=$LAST_PID
  wait_port "$B1_PORT" "$B1_PID" b1-server
  SUITE_ARGS+=(--b1-url "ws://127.0.0.1:$B1_PORT/ws" --b1-front "$B1_PID")
fi

if want b2; then
  free_port B2_NATS; free_port B2_PORT
  start nats-b2 nats-server -a 127.0.0.1 -p "$B2_NATS"; B2_NATS_PID=$LAST_PID
  wait_port "$B2_NATS" "$B2_NATS_PID" "nats-server (B2)"
  start b2-worker "$BIN/switchboard-loadtest" b2-echo-worker --nats "nats://127.0.0.1:$B2_NATS"; B2_W_PID=$LAST_PID
  start b2-relay "$BIN/switchboard-loadtest" b2-relay --listen "127.0.0.1:$B2_PORT" --nats "nats://127.0.0.1:$B2_NATS"; B2_PID=$LAST_PID
  wait_port "$B2_PORT" "$B2_PID" b2-relay
  SUITE_ARGS+=(--b2-url "ws://127.0.0.1:$B2_PORT/ws" --b2-front "$B2_PID" --b2-back "$B2_W_PID,$B2_NATS_PID")
fi

if want socketio; then
  free_port SIO_REDIS; free_port SIO_PORT
  start redis-sio redis-server --bind 127.0.0.1 --port "$SIO_REDIS" --save "" --appendonly no --dir "$RUN_DIR"; SIO_REDIS_PID=$LAST_PID
  wait_port "$SIO_REDIS" "$SIO_REDIS_PID" "redis-server (Socket.IO)"
  PORT=$SIO_PORT REDIS_URL="redis://127.0.0.1:$SIO_REDIS" start socketio node loadtest/peers/socketio/server.js; SIO_PID=$LAST_PID
  wait_port "$SIO_PORT" "$SIO_PID" "socket.io peer"
  SUITE_ARGS+=(--sio-url "ws://127.0.0.1:$SIO_PORT/socket.io/?EIO=4&transport=websocket"
               --sio-front "$SIO_PID" --sio-back "$SIO_REDIS_PID")
fi

mkdir -p "$OUT_DIR"
say "running the suite (scenarios: $SCENARIOS; targets: $TARGETS)"
"$BIN/switchboard-loadtest" suite \
  --out "$OUT_DIR/$NAME" --note "$NOTE" \
  --connections "$N" --peer-connections "$PEER_N" --hold-secs "$HOLD" \
  --pairs "$PAIRS" --pair-rate "$PAIR_RATE" \
  --fanout-members "$FAN_M" --fanout-rate "$FAN_RATE" \
  --rtt-connections "$RTT_C" --rtt-window "$RTT_W" \
  --duration "$DURATION" --repeat "$REPEAT" --scenarios "$SCENARIOS" \
  --mm-waiting "$MM_WAITING" --mm-compatible "$MM_COMPATIBLE" \
  --dm-users "$DM_USERS" --dm-rooms "$DM_ROOMS" \
  --reconnect-clients "$RC_CLIENTS" --reconnect-rooms "$RC_ROOMS" \
  --reconnect-rate "$RC_RATE" --reconnect-backoff-ms "$RC_BACKOFF" \
  "${SUITE_ARGS[@]}"
