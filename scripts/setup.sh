#!/usr/bin/env bash
# Installs everything treewatch's tests, demo and benchmarks need on a fresh Debian machine:
# Debian packages (Java, Maven, Prometheus, Alertmanager and their promtool/amtool), the Python
# distribution with its test extras, and the pinned Apache Kafka jars from Maven Central.
# Idempotent: each step checks first, so a second run takes a second or two.
set -euo pipefail
cd "$(dirname "$0")/.."

# Python packages go into the project's own virtualenv: Debian refuses `pip install` into its
# Python (externally managed), and two clones never share, or fight over, one installed treewatch.
BASE_PYTHON=${BASE_PYTHON:-python3}
VENV=${VENV:-.venv}
PYTHON=$VENV/bin/python
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need_apt=()
"$BASE_PYTHON" -c "import ensurepip, venv" 2>/dev/null || need_apt+=(python3-venv)
# WITHOUT_KAFKA=1 (`make setup-python`): only what the rule and dashboard checks need, no Java, Maven or Kafka jars.
WITHOUT_KAFKA=${WITHOUT_KAFKA:-}
if [ -z "$WITHOUT_KAFKA" ]; then
  command -v java >/dev/null || need_apt+=(default-jre-headless)
  command -v mvn >/dev/null || need_apt+=(maven)
fi
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v amtool >/dev/null || need_apt+=(prometheus-alertmanager)
command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null || need_apt+=(prometheus-alertmanager)
if [ ${#need_apt[@]} -gt 0 ]; then
  need_apt=($(printf "%s\n" "${need_apt[@]}" | sort -u))
  echo "setup: installing Debian packages: ${need_apt[*]}"
  as_root apt-get update -q
  # The packages' services are not wanted: tests start their own instances on loopback.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_apt[@]}"
  # On a host with systemd the packages start their services on :9090/:9093; treewatch's tests
  # and demo start their own on free ports, so the system ones are stopped and left disabled.
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now prometheus prometheus-alertmanager prometheus-node-exporter 2>/dev/null || true
  fi
fi

if [ ! -x "$PYTHON" ]; then
  echo "setup: creating the virtualenv $VENV"
  "$BASE_PYTHON" -m venv "$VENV"
fi
# requirements.lock pins every package (scripts/lock.sh writes it), so a fresh machine next month
# installs exactly what this commit was tested with.
stamp=$VENV/.setup.stamp
want=$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$PYTHON" -c "import treewatch, pytest" 2>/dev/null; then
  echo "setup: installing the treewatch Python distribution with its test extras into $VENV"
  "$PYTHON" -m pip install -q --disable-pip-version-check -c requirements.lock -e '.[test]'
  echo "$want" > "$stamp"
fi

if [ -n "$WITHOUT_KAFKA" ]; then
  echo "setup: ok (without Kafka)"
  exit 0
fi
"$PYTHON" -m devkafka fetch >/dev/null
echo "setup: ok (kafka jars in $("$PYTHON" -m devkafka fetch))"
