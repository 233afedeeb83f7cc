#!/usr/bin/env bash
# Installs everything treewatch's tests, demo and benchmarks need on a fresh Debian machine:
# Debian packages (Java, Maven, Prometheus, Alertmanager and their promtool/amtool), the Python
# distribution with its test extras, and the pinned Apache Kafka jars from Maven Central.
# Idempotent: each step checks first, so a second run takes a second or two.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need_apt=()
command -v java >/dev/null || need_apt+=(default-jre-headless)
command -v mvn >/dev/null || need_apt+=(maven)
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

stamp=.setup-python.stamp
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$PYTHON" -c "import treewatch, pytest" 2>/dev/null; then
  echo "setup: installing the treewatch Python distribution with its test extras"
  "$PYTHON" -m pip install -q -e '.[test]'
  echo "$want" > "$stamp"
fi

"$PYTHON" -m devkafka fetch >/dev/null
echo "setup: ok (kafka jars in $("$PYTHON" -m devkafka fetch))"
