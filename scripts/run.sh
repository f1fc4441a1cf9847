#!/usr/bin/env bash
# `make run`: NATS, Redis, one gateway, all workers and the admin API on
# localhost, in the foreground. Ctrl-C stops everything. Ports can be changed
# with NATS_PORT, REDIS_PORT, GATEWAY_PORT and ADMIN_PORT; a NATS or Redis
# already answering on its port is reused. The admin API accepts
# SWITCHBOARD_ADMIN_TOKEN (a development token unless set).
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_PORT="${NATS_PORT:-4222}"
REDIS_PORT="${REDIS_PORT:-6379}"
GATEWAY_PORT="${GATEWAY_PORT:-8080}"
ADMIN_PORT="${ADMIN_PORT:-7070}"
SWITCHBOARD_ADMIN_TOKEN="${SWITCHBOARD_ADMIN_TOKEN:-dev-admin-token-change-me}"
PROFILE="${PROFILE:-debug}"
RUN_DIR="${RUN_DIR:-.run}"
BIN="${CARGO_TARGET_DIR:-target}/$PROFILE"

bash scripts/ensure-deps.sh
if [ "$PROFILE" = release ]; then
  cargo build --release -p switchboard-gateway -p switchboard-workers -p switchboard-admin
else
  cargo build -p switchboard-gateway -p switchboard-workers -p switchboard-admin
fi
mkdir -p "$RUN_DIR"

pids=()
cleanup() {
  trap - INT TERM EXIT
  [ ${#pids[@]} -eq 0 ] && return
  echo
  echo "stopping..."
  # Gateway and workers first (they drain), then NATS and Redis.
  for ((i=${#pids[@]}-1; i>=0; i--)); do
    p=${pids[$i]}
    kill "$p" 2>/dev/null || continue
    for _ in $(seq 1 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'cleanup; exit 0' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 100); do port_open "$1" && return 0; sleep 0.1; done
  echo "error: $2 did not start on port $1; see $RUN_DIR/$2.log" >&2
  exit 1
}

if port_open "$NATS_PORT"; then
  echo "nats:    reusing the server already on 127.0.0.1:$NATS_PORT"
else
  nats-server -a 127.0.0.1 -p "$NATS_PORT" >"$RUN_DIR/nats.log" 2>&1 &
  pids+=($!)
  wait_port "$NATS_PORT" nats
fi
if port_open "$REDIS_PORT"; then
  echo "redis:   reusing the server already on 127.0.0.1:$REDIS_PORT"
else
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$RUN_DIR" >"$RUN_DIR/redis.log" 2>&1 &
  pids+=($!)
  wait_port "$REDIS_PORT" redis
fi

export SB_NATS__URL="nats://127.0.0.1:$NATS_PORT"
export SB_REDIS__URL="redis://127.0.0.1:$REDIS_PORT"
export SB_GATEWAY__LISTEN="127.0.0.1:$GATEWAY_PORT"
export SB_GATEWAY__ID="${SB_GATEWAY__ID:-local}"
export SB_ADMIN__LISTEN="127.0.0.1:$ADMIN_PORT"
export SB_ADMIN__TOKENS="[$SWITCHBOARD_ADMIN_TOKEN]"
SWITCHBOARD_ADMIN_ADDR="http://127.0.0.1:$ADMIN_PORT"

"$BIN/switchboard-workers" all >"$RUN_DIR/workers.log" 2>&1 &
pids+=($!)
"$BIN/switchboard-gateway" >"$RUN_DIR/gateway.log" 2>&1 &
pids+=($!)
wait_port "$GATEWAY_PORT" gateway
"$BIN/switchboard-workers" admin >"$RUN_DIR/admin.log" 2>&1 &
pids+=($!)
wait_port "$ADMIN_PORT" admin

alice=$("$BIN/switchboard-gateway" token --app demo --user alice)
bob=$("$BIN/switchboard-gateway" token --app demo --user bob)
cat <<MSG

Switchboard is running.
  gateway   ws://127.0.0.1:$GATEWAY_PORT/ws   (subprotocol switchboard.v1)
  health    http://127.0.0.1:$GATEWAY_PORT/healthz   http://127.0.0.1:$GATEWAY_PORT/readyz
  nats      nats://127.0.0.1:$NATS_PORT       redis  redis://127.0.0.1:$REDIS_PORT
  admin     grpc://127.0.0.1:$ADMIN_PORT  token $SWITCHBOARD_ADMIN_TOKEN (development only)
            SWITCHBOARD_ADMIN_TOKEN=$SWITCHBOARD_ADMIN_TOKEN $BIN/switchboard-admin --addr $SWITCHBOARD_ADMIN_ADDR gateways
            grpcurl -plaintext -H "authorization: Bearer $SWITCHBOARD_ADMIN_TOKEN" 127.0.0.1:$ADMIN_PORT list
  logs      $RUN_DIR/{gateway,workers,admin,nats,redis}.log

Development tokens (app "demo"; mint more with: make token USER=carol APP=demo):
  alice  $alice
  bob    $bob

Try it from two browser consoles (any page on http://localhost):
  const ws = new WebSocket("ws://127.0.0.1:$GATEWAY_PORT/ws?token=<token>", "switchboard.v1");
  ws.onmessage = (e) => console.log(e.data);
  ws.send(JSON.stringify({id: 1, op: "rooms.create", data: {room: "hello", max_members: 2}}));
  ws.send(JSON.stringify({id: 2, op: "rooms.join", data: {room: "hello"}}));
  ws.send(JSON.stringify({id: 3, op: "rooms.publish", data: {room: "hello", data: {text: "hi"}}}));

The protocol is in docs/protocol.md. Ctrl-C stops everything.
MSG

# Stay in the foreground until interrupted or a process dies.
wait -n "${pids[@]}" || true
echo "a process exited unexpectedly; see $RUN_DIR/*.log" >&2
exit 1
