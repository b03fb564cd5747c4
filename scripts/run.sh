#!/usr/bin/env bash
# PlantPulse: provision this machine (scripts/setup.sh), prepare the database
# and start the API server in the foreground.
#
#   bash scripts/run.sh [extra arguments for 'plantpulse serve']
#
# Initial management account (created once, only if no account exists):
#   PLANTPULSE_ADMIN__USERNAME / PLANTPULSE_ADMIN__EMAIL / PLANTPULSE_ADMIN__PASSWORD
# (environment or .env).
# With an empty password a password is generated and printed ONCE.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

DB_NAME="${PLANTPULSE_DB_NAME:-plantpulse}"

bash scripts/setup.sh

if [ ! -f .env ]; then
    if [ -f .env.example ]; then
        echo "==> Creating .env from .env.example (edit it for your environment)"
        cp .env.example .env
    else
        echo "WARNING: neither .env nor .env.example exists; using built-in defaults" >&2
    fi
fi

echo "==> Database '$DB_NAME' on 127.0.0.1:5432"
# (psql interpolates :'dbname' only in input read from stdin, not with -c.)
exists="$(psql -X -w -A -t -q -h 127.0.0.1 -p 5432 -U postgres -d postgres \
    -v dbname="$DB_NAME" <<<"SELECT 1 FROM pg_database WHERE datname = :'dbname'")"
if [ "$exists" = 1 ]; then
    echo "    exists"
else
    createdb -w -h 127.0.0.1 -p 5432 -U postgres -O postgres "$DB_NAME"
    echo "    created"
fi

echo "==> plantpulse migrate"
.venv/bin/plantpulse migrate

echo "==> plantpulse create-admin --if-missing"
.venv/bin/plantpulse create-admin --if-missing

echo "==> plantpulse serve $*"
exec .venv/bin/plantpulse serve "$@"
