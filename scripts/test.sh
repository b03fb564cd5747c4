#!/usr/bin/env bash
# PlantPulse: provision (scripts/setup.sh), then lint, type-check and test.
#
#   bash scripts/test.sh [pytest arguments]
#
# Every stage runs even if an earlier one failed (so one CI run reports all
# problems); the script exits non-zero if any stage failed. The tests create
# their own databases on 127.0.0.1:5432 and start their own Mosquitto broker,
# so no database setup happens here.
#
# The Community edition of TimescaleDB (what `docker compose` runs; Debian only
# ships the Apache part): when ../shared/timescaledb-tsl is beside this clone
# (or PLANTPULSE_TIMESCALEDB_TSL_DIR names it), its install.sh builds it and
# starts a second cluster on 127.0.0.1:5433. tests/community then runs against
# it in the first pytest stage, and a second stage runs the rest of the suite
# against it too (only without pytest arguments, i.e. the full run). Without
# the folder, tests/community is skipped with its reason.
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
    if [[ "$name" == pytest* ]] && [ "$rc" -eq 5 ]; then
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

junit_dir="$(mktemp -d)"
trap 'rm -rf "$junit_dir"' EXIT

tsl_dir="${PLANTPULSE_TIMESCALEDB_TSL_DIR:-$REPO_ROOT/../shared/timescaledb-tsl}"
community_url=""
# install.sh prints PLANTPULSE_TEST_COMMUNITY_URL=... last; the tests read it.
start_community() {
    local log="$junit_dir/timescaledb-tsl.log" rc
    bash "$tsl_dir/install.sh" >"$log"
    rc=$?
    cat "$log"
    [ "$rc" -eq 0 ] || return "$rc"
    community_url="$(sed -n 's/^PLANTPULSE_TEST_COMMUNITY_URL=//p' "$log" | tail -n 1)"
    if [ -z "$community_url" ]; then
        echo "ERROR: $tsl_dir/install.sh printed no PLANTPULSE_TEST_COMMUNITY_URL" >&2
        return 1
    fi
    export PLANTPULSE_TEST_COMMUNITY_URL="$community_url"
}
if [ -f "$tsl_dir/install.sh" ]; then
    run_stage "timescaledb-tsl" start_community
else
    printf '\n==> Community edition: no %s; tests/community will be skipped\n' "$tsl_dir"
fi

export PYTHONDONTWRITEBYTECODE=1
run_stage "ruff check" .venv/bin/ruff check src tests alembic
run_stage "ruff format" .venv/bin/ruff format --check src tests alembic
run_stage mypy .venv/bin/mypy src tests
run_stage pytest .venv/bin/pytest -q -rs --junitxml="$junit_dir/junit.xml" "$@"
if [ -n "$community_url" ]; then
    if [ "$#" -eq 0 ]; then
        # tests/community already ran against this cluster in the first stage.
        run_stage "pytest (Community)" env PLANTPULSE_TEST_DATABASE_URL="$community_url" \
            .venv/bin/pytest -q -rs --ignore=tests/community \
            --junitxml="$junit_dir/junit-community.xml"
    else
        printf '\n==> pytest arguments given: the suite is not repeated on the Community edition\n'
    fi
fi

printf '\n==> Summary\n'
for i in "${!stage_names[@]}"; do
    printf '    %-20s %s\n' "${stage_names[$i]}" "${stage_results[$i]}"
done
if [ "$failed" = 1 ]; then
    echo "==> FAILED"
else
    echo "==> All checks passed"
fi
# Closing line with the test counts of every pytest stage (from their JUnit XML).
junit_files=()
for file in "$junit_dir"/junit*.xml; do
    if [ -s "$file" ]; then junit_files+=("$file"); fi
done
if [ "${#junit_files[@]}" -gt 0 ]; then
    .venv/bin/python - "${junit_files[@]}" <<'PY' || true
import sys
import xml.etree.ElementTree as ET

total = failed = skipped = 0
for path in sys.argv[1:]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total += sum(int(s.get("tests", 0)) for s in suites)
    failed += sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    skipped += sum(int(s.get("skipped", 0)) for s in suites)
if total:
    print(f"tests: {total - failed - skipped} passed, {failed} failed, {skipped} skipped")
PY
fi
exit "$failed"
