#!/usr/bin/env bash
# Prometheus on the local convzoo service, from any directory, with prometheus.yml and the rule
# files as they are (README.md beside this file):
#   deploy/prometheus/run.sh            # or: make prometheus
# It scrapes localhost:$BENTOML_PORT (default 3000, as `make serve`), listens on
# $PROMETHEUS_ADDRESS (default 127.0.0.1:9090: this machine only) and keeps its data in
# $PROMETHEUS_DATA (default /tmp/convzoo-prom). Prometheus reads no environment variables in its
# configuration, so the configuration it runs is prometheus.yml with the port filled in and the rule
# and key files' paths made absolute, written beside the data folder ($PROMETHEUS_DATA.yml).
# Further arguments go to prometheus (e.g. --log.level=debug).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
port="${BENTOML_PORT:-3000}"
address="${PROMETHEUS_ADDRESS:-127.0.0.1:9090}"
data="${PROMETHEUS_DATA:-/tmp/convzoo-prom}"

if ! [[ "$port" =~ ^[0-9]{1,5}$ ]] || ((port < 1 || port > 65535)); then
  echo "error: BENTOML_PORT is '$port', not a port number (1-65535)" >&2
  exit 2
fi
if ! command -v prometheus >/dev/null 2>&1; then
  echo "error: prometheus not found (Debian: apt-get install prometheus)" >&2
  exit 2
fi

mkdir -p "$data"
config="${data%/}.yml"
sed -e "s|\"localhost:3000\"|\"localhost:$port\"|" \
    -e "s|^\(  - \)\([A-Za-z0-9_.-]*\.yml\)\$|\1$here/\2|" \
    -e "s|credentials_file: \([^/}][^}]*\)}|credentials_file: $here/\1}|" \
    "$here/prometheus.yml" > "$config.tmp"
mv "$config.tmp" "$config"

echo "prometheus: scraping localhost:$port, rules from $here, web UI on http://$address" >&2
exec prometheus --config.file="$config" --storage.tsdb.path="$data" \
  --web.listen-address="$address" "$@"
