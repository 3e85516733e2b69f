#!/usr/bin/env bash
# A two-node Ray cluster on this machine, for trying `automl submit` and for tests.
#
#   cluster/local.sh start         head (1 CPU) + one worker node (1 CPU), 127.0.0.1 only, token auth on
#   cluster/local.sh status        both nodes' pids and whether they are alive
#   cluster/local.sh kill-worker   SIGKILL the worker node (to watch a search survive a lost node)
#   cluster/local.sh stop          stop exactly the processes this script started
#   cluster/local.sh token         make the token file if there is none (start does this too)
#
# Never uses `ray stop`: that ends every Ray process on the machine, other people's included.
# Each node runs `ray start --block` in its own process group; stop kills those groups.
#
# Settings (environment): AUTOML_CLUSTER_DIR (pids and logs; default ./.ray-local),
# HEAD_PORT (GCS, default 6390), DASHBOARD_PORT (Jobs API, default 8265), HEAD_CPUS, WORKER_CPUS (1 each).
# The token is Ray's: RAY_AUTH_TOKEN if set, else the file RAY_AUTH_TOKEN_PATH if set, else ~/.ray/auth_token.
# `ray start` does not make one: start (and token) write a new 0600 file when there is none
# (cluster/make_token.sh), and never print the token; `ray get-auth-token` prints it when you need it.
set -euo pipefail

# shellcheck source=cluster/make_token.sh
source "$(dirname "${BASH_SOURCE[0]}")/make_token.sh"

STATE=${AUTOML_CLUSTER_DIR:-.ray-local}
HEAD_PORT=${HEAD_PORT:-6390}
DASHBOARD_PORT=${DASHBOARD_PORT:-8265}
HEAD_CPUS=${HEAD_CPUS:-1}
WORKER_CPUS=${WORKER_CPUS:-1}
AGENT_PORTS="--dashboard-agent-listen-port=0 --metrics-export-port=0"
export RAY_AUTH_MODE=token   # never off: the Jobs API runs any code for whoever reaches it

alive() { [[ -f "$STATE/$1.pid" ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

start_node() {  # name, then ray start arguments
  local name=$1; shift
  setsid ray start --block --node-ip-address=127.0.0.1 "$@" >"$STATE/$name.log" 2>&1 &
  echo $! >"$STATE/$name.pid"
}

live_nodes() {  # wait until the cluster has at least $1 live nodes (give up after $2 s); print how many
  python - "$1" "$2" "$HEAD_PORT" <<'EOF'
import logging, sys, time
import ray
want, wait_s, port = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
deadline, alive = time.monotonic() + wait_s, 0
while True:
    try:
        ray.init(address=f"127.0.0.1:{port}", logging_level=logging.ERROR, log_to_driver=False)
        alive = sum(node["Alive"] for node in ray.nodes())
        ray.shutdown()
    except Exception:
        pass
    if alive >= want or time.monotonic() > deadline:
        break
    time.sleep(1)
print(f"live nodes: {alive}")
sys.exit(0 if alive >= want else f"cluster/local.sh: fewer than {want} live nodes after {wait_s:.0f} s; see the node logs")
EOF
}

case "${1:-}" in
  start)
    mkdir -p "$STATE"
    if alive head || alive worker; then echo "cluster/local.sh: already running (cluster/local.sh stop first)" >&2; exit 2; fi
    ensure_token
    # Agent ports off Ray's fixed defaults (0 = any free port): two nodes, or two clusters, on one
    # machine would clash. Each node gets its own temp dir: sharing one, a lost worker took the
    # head's job folders with it.
    start_node head --head --temp-dir="/tmp/automl-ray-$HEAD_PORT-head" --port="$HEAD_PORT" --dashboard-host=127.0.0.1 \
      --dashboard-port="$DASHBOARD_PORT" --num-cpus="$HEAD_CPUS" --num-gpus=0 $AGENT_PORTS
    live_nodes 1 60 >/dev/null
    start_node worker --address="127.0.0.1:$HEAD_PORT" --temp-dir="/tmp/automl-ray-$HEAD_PORT-worker" --num-cpus="$WORKER_CPUS" --num-gpus=0 \
      $AGENT_PORTS
    live_nodes 2 60 >/dev/null
    echo "two-node Ray cluster up: GCS 127.0.0.1:$HEAD_PORT, Jobs API http://127.0.0.1:$DASHBOARD_PORT (token auth on)"
    echo "try: automl submit quick --address http://127.0.0.1:$DASHBOARD_PORT --data \$PWD/../shared/data/ham10000_28 --name quick-cluster --results \$PWD/results --wait"
    ;;
  token)
    ensure_token
    ;;
  status)
    for node in head worker; do
      if alive $node; then echo "$node: running (pid $(cat "$STATE/$node.pid"))"; else echo "$node: not running"; fi
    done
    if alive head; then live_nodes 0 0; fi
    ;;
  kill-worker)
    alive worker || { echo "cluster/local.sh: no worker node running" >&2; exit 2; }
    kill -KILL -- "-$(cat "$STATE/worker.pid")"
    echo "worker node killed (process group $(cat "$STATE/worker.pid"))"
    ;;
  stop)
    for node in worker head; do
      if [[ -f "$STATE/$node.pid" ]]; then
        pgid=$(cat "$STATE/$node.pid")
        kill -TERM -- "-$pgid" 2>/dev/null || true
        for _ in $(seq 20); do kill -0 -- "-$pgid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL -- "-$pgid" 2>/dev/null || true
        rm -f "$STATE/$node.pid"
      fi
    done
    # `ray start --head` records its address for later `ray.init()` calls; do not leave ours behind.
    if [[ "$(cat /tmp/ray/ray_current_cluster 2>/dev/null)" == *":$HEAD_PORT" ]]; then rm -f /tmp/ray/ray_current_cluster; fi
    echo "cluster stopped"
    ;;
  *)
    sed -n '2,17p' "$0" >&2
    exit 2
    ;;
esac
