#!/usr/bin/env bash
# Installs the checkers that tests/ops.rs uses for the files under ops/, once, into a cached
# virtual environment (about 70 s and 300 MiB the first time; a few seconds afterwards):
#   * systemd-analyze (Debian package systemd): `systemd-analyze verify` of ops/systemd/
#   * Apache Airflow: loads ops/airflow/marnflow_daily.py with DagBag, checks its timetable
#   * kubernetes-validate: ops/k8s/marnflow-daily.yaml against the Kubernetes API schemas, offline
#   * PyYAML (comes with both)
# The tests skip a checker that is missing, saying what to install, and run every other check.
#
#   bash ops/ci-tools.sh            # install what is missing; a failed download is a warning
#   bash ops/ci-tools.sh --check    # only report; exit 1 if something is missing
#   bash ops/ci-tools.sh --strict   # install; exit 1 if something could not be installed
# The venv lives in $OPS_VENV (default ~/.cache/marnflow/ops-venv), where tests/ops.rs looks.
set -euo pipefail

mode="${1:-install}"
venv="${OPS_VENV:-$HOME/.cache/marnflow/ops-venv}"
airflow_pin="apache-airflow==3.3.2"
validate_pin="kubernetes-validate==1.37.0"
missing=()

have_venv_tools() {
  [ -x "$venv/bin/python" ] && [ -x "$venv/bin/kubernetes-validate" ] &&
    AIRFLOW_HOME="$(mktemp -d)" "$venv/bin/python" -c 'import airflow, yaml' >/dev/null 2>&1
}

command -v systemd-analyze >/dev/null 2>&1 || missing+=("systemd-analyze (apt-get install systemd)")
have_venv_tools || missing+=("$venv ($airflow_pin, $validate_pin)")

if [ ${#missing[@]} -eq 0 ]; then
  echo "ci-tools: all checkers present: $(systemd-analyze --version | head -n1), venv $venv"
  exit 0
fi
if [ "$mode" = "--check" ]; then
  printf 'ci-tools: missing: %s\n' "${missing[@]}" >&2
  echo "ci-tools: run 'bash ops/ci-tools.sh' to install them" >&2
  exit 1
fi

failed=0
if ! command -v systemd-analyze >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  started=$SECONDS
  if $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends systemd >/dev/null; then
    echo "ci-tools: installed systemd in $((SECONDS - started)) s"
  else
    echo "ci-tools: WARNING: could not install systemd (systemd-analyze); its checks will be skipped" >&2
    failed=1
  fi
fi
if ! have_venv_tools; then
  started=$SECONDS
  python=""
  for p in python3 /usr/bin/python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -m venv --help >/dev/null 2>&1; then
      python="$p"
      break
    fi
  done
  if [ -z "$python" ]; then
    echo "ci-tools: WARNING: no python3 with venv (apt-get install python3-venv); Airflow and schema checks will be skipped" >&2
    failed=1
  elif rm -rf "$venv" && "$python" -m venv "$venv" &&
    "$venv/bin/pip" install -q --disable-pip-version-check "$airflow_pin" "$validate_pin"; then
    echo "ci-tools: installed $airflow_pin and $validate_pin into $venv in $((SECONDS - started)) s"
  else
    rm -rf "$venv"
    echo "ci-tools: WARNING: could not install $airflow_pin and $validate_pin; their checks will be skipped" >&2
    failed=1
  fi
fi
if [ "$failed" = 1 ] && [ "$mode" = "--strict" ]; then
  exit 1
fi
exit 0
