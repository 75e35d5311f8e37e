#!/usr/bin/env bash
# local-two-node.sh — a two-node Ray cluster on ONE machine, for trying multi-node raylora studies:
# a head on 127.0.0.1 and a worker on 127.0.0.2 (both loopback addresses), 1 CPU each, no dashboard.
# Both nodes share this machine's disk, so no shared storage is needed here (a real cluster needs it).
#
# Use (from the repository root):
#   cluster/local-two-node.sh start          # prints the address to pass as --address
#   export RAY_AUTH_MODE=token               # the cluster runs with Ray token auth (~/.ray/auth_token)
#   .venv/bin/raylora search search_spaces/quickstart.yaml --address 127.0.0.1:6399 --dry-run   # 2 nodes listed
#   .venv/bin/raylora search search_spaces/quickstart.yaml --address 127.0.0.1:6399
#   cluster/local-two-node.sh status
#   cluster/local-two-node.sh stop           # `ray stop --force`: stops EVERY Ray process of this user here
#
# Environment: RAYLORA_LOCAL_RAY_PORT (default 6399) — the head's GCS port; the nodes' agent and client
# ports are derived from it so they do not collide with another Ray instance on this machine.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
if [[ -x "$here/../.venv/bin/ray" ]]; then
  ray_cli="$here/../.venv/bin/ray"
else
  ray_cli="ray"
fi
port="${RAYLORA_LOCAL_RAY_PORT:-6399}"
address="127.0.0.1:${port}"
# Set explicitly on both nodes: a node started without it would not authenticate to the other.
export RAY_AUTH_MODE=token

usage() {
  echo "usage: $0 start|stop|status" >&2
}

start() {
  # The token lives in ~/.ray/auth_token (created once if missing); it is never printed.
  "$ray_cli" get-auth-token --generate > /dev/null
  # The dashboard serves the State API, which Ray Train uses to free a stopped trial's placement group.
  "$ray_cli" start --head --node-ip-address 127.0.0.1 --port "$port" --num-cpus 1 \
    --dashboard-agent-listen-port $((port + 1)) --ray-client-server-port $((port + 3)) \
    --object-store-memory 500000000
  "$ray_cli" start --address "$address" --node-ip-address 127.0.0.2 --num-cpus 1 \
    --dashboard-agent-listen-port $((port + 2)) \
    --object-store-memory 500000000
  cat <<MSG

Two Ray nodes are up (127.0.0.1 head, 127.0.0.2 worker). Address: ${address}
  export RAY_AUTH_MODE=token
  raylora search search_spaces/quickstart.yaml --address ${address}
Stop with: $0 stop
MSG
}

case "${1:-}" in
  start) start ;;
  stop)
    echo "ray stop --force: this stops every Ray process of user $(id -un) on this machine" >&2
    "$ray_cli" stop --force
    ;;
  status) "$ray_cli" status --address "$address" ;;
  *) usage; exit 2 ;;
esac
