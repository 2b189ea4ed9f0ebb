#!/usr/bin/env bash
# Checks the monitoring role's alert rules with promtool (Debian's prometheus
# package: apt-get install -y --no-install-recommends prometheus).
#
#   tests/prometheus/check.sh DIR   DIR holds the rules as rendered by
#                                   ansible-playbook -i tests/prometheus/inventory.yml tests/prometheus/render.yml -e out=DIR
#   tests/prometheus/check.sh       renders them into a temporary directory first
#                                   (needs ansible-playbook: ./kit run tests/prometheus/check.sh)
#
# 1. promtool check rules: the rendered file is valid (syntax, PromQL, templates).
# 2. promtool test rules: claude-kit.rules.test.yml, copied beside the rendered
#    file, because promtool reads a test file's rule_files relative to the test
#    file's own directory (rule_files: [claude-kit.rules.yml]).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RULES=claude-kit.rules.yml
TESTS=claude-kit.rules.test.yml

for tool in promtool amtool; do
  command -v "$tool" >/dev/null ||
    { echo "check.sh: $tool not found (./kit bootstrap --test unpacks Debian's prometheus and prometheus-alertmanager into .cache/prometheus-tools)" >&2; exit 2; }
done

if [ $# -gt 1 ]; then
  echo "usage: $0 [DIR]" >&2
  exit 2
elif [ $# -eq 1 ]; then
  dir=$1
else
  dir=$(mktemp -d "${TMPDIR:-/tmp}/kit-prometheus.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$dir'" EXIT
  ansible-playbook -i "$HERE/inventory.yml" "$HERE/render.yml" -e out="$dir" >/dev/null ||
    { echo "check.sh: rendering failed: ansible-playbook -i $HERE/inventory.yml $HERE/render.yml -e out=$dir" >&2; exit 1; }
fi

[ -f "$dir/$RULES" ] || { echo "check.sh: no $dir/$RULES (render it: ansible-playbook $HERE/render.yml -e out=$dir)" >&2; exit 2; }

promtool check rules "$dir/$RULES"
cp "$HERE/$TESTS" "$dir/$TESTS"
promtool test rules "$dir/$TESTS"
# 3. The configurations as the role writes them for a lab-shaped inventory
#    (the role checks them the same way on the monitoring host before installing).
promtool check config "$dir/prometheus.yml"
amtool check-config "$dir/alertmanager.yml"
