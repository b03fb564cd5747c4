#!/usr/bin/env bash
# PlantPulse: provision (scripts/setup.sh), then lint, type-check and test.
#
#   bash scripts/test.sh [pytest arguments]
#
# Every stage runs even if an earlier one failed (so one CI run reports all
# problems); the script exits non-zero if any stage failed. The tests create
# their own databases on 127.0.0.1:5432 and start their own Mosquitto broker,
# so no database setup happens here.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

stage_names=()
stage_results=()
failed=0

now_ms() { date +%s%3N; }

# run_stage NAME COMMAND...: run, time, record; never aborts the script.
run_stage() {
    local name="$1" start end rc
    shift
    printf '\n==> %s\n' "$name"
    start="$(now_ms)"
    set +e
    "$@"
    rc=$?
    set -e
    end="$(now_ms)"
    local secs
    secs="$(awk -v ms="$((end - start))" 'BEGIN { printf "%.1f", ms / 1000 }')"
    if [ "$name" = pytest ] && [ "$rc" -eq 5 ]; then
        echo "ERROR: pytest collected no tests (exit code 5): that counts as a failure" >&2
    fi
    if [ "$rc" -eq 0 ]; then
        printf '<== %s: ok (%ss)\n' "$name" "$secs"
        stage_results+=("ok      ${secs}s")
    else
        printf '<== %s: FAILED with exit code %s (%ss)\n' "$name" "$rc" "$secs"
        stage_results+=("FAILED  ${secs}s (exit $rc)")
        failed=1
    fi
    stage_names+=("$name")
    return 0
}

run_stage setup bash scripts/setup.sh
if [ "$failed" = 1 ]; then
    echo "ERROR: scripts/setup.sh failed; not running the checks" >&2
    exit 1
fi

export PYTHONDONTWRITEBYTECODE=1
run_stage "ruff check" .venv/bin/ruff check src tests alembic
run_stage "ruff format" .venv/bin/ruff format --check src tests alembic
run_stage mypy .venv/bin/mypy src
junit_dir="$(mktemp -d)"
trap 'rm -rf "$junit_dir"' EXIT
run_stage pytest .venv/bin/pytest -q --junitxml="$junit_dir/junit.xml" "$@"

printf '\n==> Summary\n'
for i in "${!stage_names[@]}"; do
    printf '    %-12s %s\n' "${stage_names[$i]}" "${stage_results[$i]}"
done
if [ "$failed" = 1 ]; then
    echo "==> FAILED"
else
    echo "==> All checks passed"
fi
# Closing line with the test counts (from pytest's JUnit XML).
if [ -s "$junit_dir/junit.xml" ]; then
    .venv/bin/python - "$junit_dir/junit.xml" <<'PY' || true
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
total = sum(int(s.get("tests", 0)) for s in suites)
failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
skipped = sum(int(s.get("skipped", 0)) for s in suites)
if total:
    print(f"tests: {total - failed - skipped} passed, {failed} failed, {skipped} skipped")
PY
fi
exit "$failed"
