#!/usr/bin/env bash
# Installs the peers that the benchmarks compare marnflow against into a cached virtual
# environment: DuckDB's Python package, for the feature job written plainly in DuckDB
# (ops/peers/features_duckdb.py). Idempotent; a few seconds once installed.
#
#   bash ops/setup-peers.sh            # install what is missing
#   bash ops/setup-peers.sh --check    # only report; exit 1 if something is missing
#   bash ops/setup-peers.sh --python   # print the venv's python (after a setup)
# The venv lives in $PEERS_VENV (default ~/.cache/marnflow/peers), where ops/bench-peers.sh and
# tests/ops.rs look for it.
set -euo pipefail

mode="${1:-install}"
venv="${PEERS_VENV:-$HOME/.cache/marnflow/peers}"
duckdb_pin="duckdb==2.0.1"

have() { [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import duckdb' >/dev/null 2>&1; }

if [ "$mode" = "--python" ]; then
  have || { echo "setup-peers: no peers venv at $venv; run bash ops/setup-peers.sh" >&2; exit 1; }
  echo "$venv/bin/python"
  exit 0
fi
if have; then
  echo "setup-peers: $("$venv/bin/python" -c 'import duckdb; print("duckdb", duckdb.__version__)') in $venv" >&2
  exit 0
fi
if [ "$mode" = "--check" ]; then
  echo "setup-peers: missing $duckdb_pin in $venv; run bash ops/setup-peers.sh" >&2
  exit 1
fi
command -v python3 >/dev/null || { echo "setup-peers: python3 with venv is needed" >&2; exit 1; }
started=$SECONDS
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "$duckdb_pin"
echo "setup-peers: installed $duckdb_pin into $venv in $((SECONDS - started)) s" >&2
