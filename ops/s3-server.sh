#!/usr/bin/env bash
# A local S3-compatible server on loopback, for the S3 tests and for trying `--lake s3://…`:
# moto's S3 (PyPI `moto`, pinned below) in a virtualenv cached under ~/.cache/marnflow.
#
#   bash ops/s3-server.sh install            # install it (idempotent; ~25 s the first time)
#   eval "$(bash ops/s3-server.sh start)"    # install if missing, start on 127.0.0.1:<free port>,
#                                            # create the test bucket, print `export` lines
#   bash ops/s3-server.sh stop [DIR]         # stop the server `start` started (default: the last)
#
# `start` prints, for the shell to export: AWS_ENDPOINT_URL, AWS_ALLOW_HTTP, AWS_REGION,
# AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (what marnflow's S3 lake reads; the keys are
# random for each start), MARNFLOW_TEST_S3_ENDPOINT and MARNFLOW_TEST_S3_BUCKET (what
# tests/s3.rs reads), and MARNFLOW_TEST_S3_SERVER_DIR (the server's pid, port and log).
#
# The server handles one request at a time: moto checks `If-None-Match: *` and then writes, which
# is a conditional create (what the model registry's alias events rely on) only when requests
# do not interleave. Data lives in the server's memory and goes away with it.
set -euo pipefail

MOTO_REQUIREMENTS=("moto[s3]==5.2.5" "flask==3.1.3" "flask-cors==6.0.5")
BUCKET="${MARNFLOW_TEST_S3_BUCKET:-marnflow-test}"
BASE="$HOME/.cache/marnflow/s3-server"
VENV="$BASE/venv"

log() { echo "s3-server: $*" >&2; }

install() {
  mkdir -p "$BASE"
  local want="${MOTO_REQUIREMENTS[*]}"
  # One installer at a time (two CI runs may start together).
  exec 9>"$BASE/install.lock"
  flock 9
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.installed" 2>/dev/null)" = "$want" ]; then
    flock -u 9
    return 0
  fi
  command -v python3 >/dev/null 2>&1 || { log "python3 is missing (apt-get install python3 python3-venv)"; exit 1; }
  log "installing ${want} into $VENV"
  local started=$SECONDS
  rm -rf "$VENV"
  python3 -m venv "$VENV" || { log "python3 -m venv failed (apt-get install python3-venv)"; exit 1; }
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${MOTO_REQUIREMENTS[@]}" >&2
  echo "$want" >"$VENV/.installed"
  log "installed in $((SECONDS - started)) s"
  flock -u 9
}

# The server: moto's S3 on 127.0.0.1, a port chosen by the kernel and written to $1/port,
# serving one request at a time (see the header).
read -r -d '' LAUNCHER <<'EOF' || true
import os, signal, sys
from werkzeug.serving import make_server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

run_dir = sys.argv[1]
app = DomainDispatcherApplication(create_backend_app)
server = make_server("127.0.0.1", 0, app, threaded=False, request_handler=MotoRequestHandler)
os.environ["MOTO_PORT"] = str(server.port)
with open(os.path.join(run_dir, "port.tmp"), "w") as f:
    f.write(str(server.port))
os.replace(os.path.join(run_dir, "port.tmp"), os.path.join(run_dir, "port"))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
server.serve_forever()
EOF

read -r -d '' CREATE_BUCKET <<'EOF' || true
import os, sys
import boto3
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
s3.create_bucket(Bucket=sys.argv[1])
EOF

random_token() { LC_ALL=C tr -dc "$1" </dev/urandom | head -c "$2" || true; }

start() {
  install
  local dir
  dir="$(mktemp -d "$BASE/run.XXXXXX")"
  nohup "$VENV/bin/python" -c "$LAUNCHER" "$dir" >"$dir/server.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$dir/pid"
  ln -sfn "$dir" "$BASE/last"
  local port=""
  for _ in $(seq 1 200); do
    if [ -s "$dir/port" ]; then
      port="$(cat "$dir/port")"
      curl -sf -o /dev/null "http://127.0.0.1:$port/" && break
    fi
    kill -0 "$pid" 2>/dev/null || { log "the server exited:"; cat "$dir/server.log" >&2; exit 1; }
    sleep 0.1
  done
  if [ -z "$port" ] || ! curl -sf -o /dev/null "http://127.0.0.1:$port/"; then
    log "the server did not answer within 20 s (log: $dir/server.log)"
    kill "$pid" 2>/dev/null || true
    exit 1
  fi
  local endpoint="http://127.0.0.1:$port"
  export AWS_ENDPOINT_URL="$endpoint" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
  AWS_ACCESS_KEY_ID="MARNFLOWTEST$(random_token 'A-Z0-9' 8)"
  AWS_SECRET_ACCESS_KEY="$(random_token 'A-Za-z0-9' 40)"
  export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
  "$VENV/bin/python" -c "$CREATE_BUCKET" "$BUCKET" >&2
  log "S3 at $endpoint (pid $pid, bucket $BUCKET, log $dir/server.log)"
  cat <<EOT
export MARNFLOW_TEST_S3_SERVER_DIR='$dir'
export MARNFLOW_TEST_S3_ENDPOINT='$endpoint'
export MARNFLOW_TEST_S3_BUCKET='$BUCKET'
export AWS_ENDPOINT_URL='$endpoint'
export AWS_ALLOW_HTTP=true
export AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID='$AWS_ACCESS_KEY_ID'
export AWS_SECRET_ACCESS_KEY='$AWS_SECRET_ACCESS_KEY'
EOT
}

stop() {
  local dir="${1:-${MARNFLOW_TEST_S3_SERVER_DIR:-}}"
  [ -n "$dir" ] || dir="$(readlink "$BASE/last" 2>/dev/null || true)"
  if [ -z "$dir" ] || [ ! -f "$dir/pid" ]; then
    log "no server to stop"
    return 0
  fi
  local pid
  pid="$(cat "$dir/pid")"
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    log "stopped (pid $pid)"
  fi
  [ "$(readlink "$BASE/last" 2>/dev/null || true)" = "$dir" ] && rm -f "$BASE/last"
  rm -rf "$dir"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop "${2:-}" ;;
  *)
    echo "usage: bash ops/s3-server.sh install | start | stop [DIR]" >&2
    exit 2
    ;;
esac
