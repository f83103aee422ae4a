#!/bin/bash
# deploy/prometheus checked by Prometheus's own tool: the scrape config and
# the alert rules load, and every alert's unit tests (firing and not firing,
# alerts_test.yaml) pass.
set -euo pipefail
dir=$(cd "$(dirname "$0")/../deploy/prometheus" && pwd)
command -v promtool >/dev/null ||
  { echo "SKIP: no promtool (Debian's prometheus package)"; exit 77; }
cd "$dir"
promtool check config prometheus.yml
promtool check rules alerts.yaml
promtool test rules alerts_test.yaml
echo "PASS: deploy/prometheus"
