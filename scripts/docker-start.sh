#!/bin/sh
# Container start (docker-compose.yml): make sure PlantPulse has a real JWT secret, then run the
# given command (migrate, create-admin, serve).
#
# PLANTPULSE_AUTH__JWT_SECRET from the environment wins. When it is empty, or the public
# example value of .env.example (compose picks variables up from a .env that scripts/run.sh
# made from it), a random secret is generated on the first start into
# $PLANTPULSE_SECRETS_DIR/jwt_secret (default /var/lib/plantpulse, a volume in compose; mode 600)
# and read again on every later start, so tokens stay valid across restarts. Anyone who can
# read that file can mint tokens for any account: treat it like a password.
set -eu

dir="${PLANTPULSE_SECRETS_DIR:-/var/lib/plantpulse}"
file="$dir/jwt_secret"
secret="${PLANTPULSE_AUTH__JWT_SECRET:-}"
example="$(python -c 'from plantpulse.config import EXAMPLE_JWT_SECRET as s; print(s)')"
if [ "$secret" = "$example" ]; then
    echo "plantpulse-start: PLANTPULSE_AUTH__JWT_SECRET is the public example value (from a" \
        ".env?); ignoring it and using $file" >&2
    secret=""
fi
if [ -z "$secret" ]; then
    if [ ! -s "$file" ]; then
        (umask 077 && python -c 'import secrets; print(secrets.token_urlsafe(48))' >"$file.new")
        mv "$file.new" "$file"
        echo "plantpulse-start: generated a JWT secret into $file (kept across restarts)" >&2
    fi
    secret="$(cat "$file")"
fi
PLANTPULSE_AUTH__JWT_SECRET="$secret"
export PLANTPULSE_AUTH__JWT_SECRET
exec "$@"
