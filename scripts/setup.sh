#!/usr/bin/env bash
# PlantPulse: provision a Debian 12 machine (as root) for development and CI.
#
#   PostgreSQL 15 + TimescaleDB (built from Debian's trixie source package,
#   Apache-2 part only), Redis, Mosquitto (tuned for QoS 1 bursts) and the
#   Python virtualenv .venv with the project installed editable ('.[dev]').
#   Dashboard: its pinned npm packages (Node.js/npm from Debian if missing) and
#   Debian's chromium for the browser tests.
#
# Idempotent: a second run on a provisioned machine only checks things (a few
# seconds) and restarts nothing that is already configured correctly.
# Works without systemd (services are started directly) and without a TTY.
#
# Environment knobs:
#   PLANTPULSE_SKIP_APT=1     never call apt-get (fails if something is missing)
#   PLANTPULSE_PYTHON=python3.12   interpreter for a new .venv (>= 3.11)
#   PLANTPULSE_BUILD_DIR=...  where TimescaleDB is built (/var/tmp/plantpulse-build)
#
# DEVELOPMENT SETUP: PostgreSQL accepts passwordless (trust) connections on
# 127.0.0.1/::1 and Mosquitto accepts anonymous clients. Do not use as-is on a
# machine reachable by others.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1

PG_MAJOR=15
PG_CLUSTER=main
PG_PORT=5432
PG_BIN="/usr/lib/postgresql/$PG_MAJOR/bin"
PG_CONFIG="$PG_BIN/pg_config"
PG_CONF_DIR="/etc/postgresql/$PG_MAJOR/$PG_CLUSTER"
PG_LOG="/var/log/postgresql/postgresql-$PG_MAJOR-$PG_CLUSTER.log"
TSDB_CONTROL="/usr/share/postgresql/$PG_MAJOR/extension/timescaledb.control"
TSDB_SOURCE_SUITE=trixie
TSDB_SOURCES_FILE=/etc/apt/sources.list.d/plantpulse-trixie-src.sources
BUILD_DIR="${PLANTPULSE_BUILD_DIR:-/var/tmp/plantpulse-build}"

MOSQ_CONF_SRC="$REPO_ROOT/scripts/mosquitto.conf"
MOSQ_MAIN_CONF=/etc/mosquitto/mosquitto.conf
MOSQ_DROPIN_DIR=/etc/mosquitto/conf.d
MOSQ_DROPIN="$MOSQ_DROPIN_DIR/plantpulse.conf"
MOSQ_PID=/run/mosquitto/mosquitto.pid
MOSQ_LOG=/var/log/mosquitto/mosquitto.log

VENV="$REPO_ROOT/.venv"
VENV_STAMP="$VENV/.plantpulse-installed"

# ---------------------------------------------------------------- helpers ----
step() { printf '==> [%4ss] %s\n' "$SECONDS" "$*"; }
note() { printf '    %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

# Write $2 to file $1 only if the content differs. Returns 0 if it wrote.
write_if_changed() {
    local path="$1" content="$2"
    if [ -f "$path" ] && [ "$(cat "$path")" = "$content" ]; then
        return 1
    fi
    mkdir -p "$(dirname "$path")"
    printf '%s\n' "$content" >"$path.plantpulse-tmp"
    mv -f "$path.plantpulse-tmp" "$path"
    return 0
}

have_pkg() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

APT_UPDATED=0
apt_update_once() {
    if [ "$APT_UPDATED" = 0 ]; then
        step "apt-get update"
        apt-get -q -o DPkg::Lock::Timeout=600 update >/dev/null
        APT_UPDATED=1
    fi
}

apt_install_missing() {
    local missing=() pkg
    for pkg in "$@"; do
        have_pkg "$pkg" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    if [ "${PLANTPULSE_SKIP_APT:-0}" = 1 ]; then
        die "missing Debian packages (PLANTPULSE_SKIP_APT=1): ${missing[*]}"
    fi
    apt_update_once
    step "apt-get install ${missing[*]}"
    apt-get -qq -y -o DPkg::Lock::Timeout=600 \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        install --no-install-recommends "${missing[@]}" 9>&- # postinst may start services
}

# First interpreter >= 3.11 that can create venvs (pip via ensurepip).
find_python() {
    local cand
    for cand in ${PLANTPULSE_PYTHON:-} python3 python3.13 python3.12 python3.11; do
        command -v "$cand" >/dev/null 2>&1 || continue
        if "$cand" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' \
            >/dev/null 2>&1; then
            command -v "$cand"
            return 0
        fi
    done
    return 1
}

as_postgres() { (cd / && runuser -u postgres -- "$@"); }
# Admin SQL over the local socket (peer auth as OS user postgres).
pg_sql() { as_postgres psql -X -A -t -q -p "$PG_PORT" -d postgres -c "$1"; }
# "9>&-": daemons must not inherit the lock fd (they would hold the lock forever).
pg_ctl_cluster() { pg_ctlcluster --skip-systemctl-redirect "$PG_MAJOR" "$PG_CLUSTER" "$@" 9>&-; }
pg_running() { pg_ctl_cluster status >/dev/null 2>&1; }
pg_preloaded() {
    local libs
    libs="$(pg_sql 'SHOW shared_preload_libraries')" || return 1
    libs="${libs//[[:space:]\"]/}"
    [[ ",$libs," == *,timescaledb,* ]]
}

pg_wait_ready() {
    for _ in $(seq 1 60); do
        if "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
            return 0
        fi
        sleep 1
    done
    tail -n 30 "$PG_LOG" >&2 || true
    die "PostgreSQL did not become ready on 127.0.0.1:$PG_PORT within 60 s"
}

# Can we log in as postgres over TCP without any password?
pg_tcp_trust_ok() {
    env -u PGPASSWORD PGPASSFILE=/dev/null PGCONNECT_TIMEOUT=5 \
        psql -X -w -A -t -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
        -c 'select 1' >/dev/null 2>&1
}

redis_ping() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null || true)" = PONG ]; }

mosq_version() {
    # shellcheck disable=SC2016  # '$SYS' is an MQTT topic, not a variable
    mosquitto_sub -h 127.0.0.1 -p 1883 -t '$SYS/broker/version' -C 1 -W 5 2>/dev/null
}
mosq_pid_alive() {
    local pid
    [ -s "$MOSQ_PID" ] || return 1
    pid="$(cat "$MOSQ_PID")"
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = mosquitto ]
}

# URI of the Debian archive (the stanza/line for the main release, not
# -security/-updates), read from this machine's apt configuration, plus the
# keyring that stanza uses. Prints "URI<TAB>KEYRING" (keyring may be empty).
debian_archive_uri() {
    local codename="$1" out=""
    if [ -r /etc/apt/sources.list.d/debian.sources ]; then
        out="$(awk -v want="$codename" '
            function flush(   n, i, s, u) {
                if (types ~ /(^|[ \t])deb([ \t]|$)/ && tolower(enabled) != "no") {
                    n = split(suites, s, /[ \t]+/)
                    for (i = 1; i <= n; i++) {
                        if (s[i] == want) {
                            split(uris, u, /[ \t]+/)
                            if (signed !~ /^\//) signed = ""
                            printf "%s\t%s\n", u[1], signed
                            found = 1
                            exit
                        }
                    }
                }
                types = suites = uris = enabled = signed = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]/ { next }
            {
                key = tolower($0); sub(/:.*/, "", key)
                val = $0; sub(/^[^:]*:[ \t]*/, "", val); sub(/[ \t]+$/, "", val)
                if (key == "types") types = val
                else if (key == "suites") suites = val
                else if (key == "uris") uris = val
                else if (key == "enabled") enabled = val
                else if (key == "signed-by") signed = val
            }
            END { if (!found) flush() }
        ' /etc/apt/sources.list.d/debian.sources)"
    fi
    if [ -z "$out" ] && [ -r /etc/apt/sources.list ]; then
        out="$(awk -v want="$codename" '
            $1 == "deb" {
                line = $0
                gsub(/\[[^]]*\]/, "", line)
                n = split(line, f, /[ \t]+/)
                if (f[1] == "") { for (i = 1; i < n; i++) f[i] = f[i + 1]; n-- }
                if (n >= 3 && f[3] == want) { printf "%s\t\n", f[2]; exit }
            }
        ' /etc/apt/sources.list)"
    fi
    [ -n "$out" ] || return 1
    printf '%s\n' "$out"
}

# ------------------------------------------------------------------- main ----
[ "$(id -u)" = 0 ] || die "run as root (it installs and configures system services)"

# Serialize concurrent runs (e.g. scripts/run.sh and scripts/test.sh at once).
# Services started below get "9>&-" so that they do not inherit this fd.
mkdir -p /run/lock
exec 9>/run/lock/plantpulse-setup.lock
if ! flock -n 9; then
    step "Waiting for another scripts/setup.sh to finish"
    flock -w 900 9 || die "another scripts/setup.sh still holds /run/lock/plantpulse-setup.lock"
fi

step "PlantPulse setup in $REPO_ROOT"

# a. Debian packages --------------------------------------------------------
need_tsdb_build=0
[ -f "$TSDB_CONTROL" ] || need_tsdb_build=1

step "Checking Debian packages"
pkgs=(postgresql-"$PG_MAJOR" postgresql-client-"$PG_MAJOR" redis-server redis-tools
    mosquitto mosquitto-clients ca-certificates)
# Debian's own python3 needs python3-venv for 'python3 -m venv' (with pip).
if ! sys_py="$(find_python)"; then
    pkgs+=(python3 python3-venv)
elif [[ "$(readlink -f "$sys_py")" == /usr/bin/* ]]; then
    pkgs+=(python3-venv)
fi
if [ "$need_tsdb_build" = 1 ]; then
    # Only needed to build TimescaleDB (not installed once it exists).
    # (Debian's own Build-Depends are just cmake + postgresql-server-dev-all;
    # libkrb5-dev is NOT needed for the Apache-only build.)
    pkgs+=(postgresql-server-dev-"$PG_MAJOR" build-essential cmake dpkg-dev libssl-dev)
fi

if [ "$need_tsdb_build" = 1 ] && [ "${PLANTPULSE_SKIP_APT:-0}" != 1 ]; then
    # Add the trixie deb-src entry before the (single) apt-get update.
    # shellcheck disable=SC1091
    codename="$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")"
    [ -n "$codename" ] || die "cannot read VERSION_CODENAME from /etc/os-release"
    archive="$(debian_archive_uri "$codename")" ||
        die "no Debian archive URI for '$codename' in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
    archive_uri="${archive%%$'\t'*}"
    archive_key="${archive#*$'\t'}"
    if [ -z "$archive_key" ] && [ -f /usr/share/keyrings/debian-archive-keyring.gpg ]; then
        archive_key=/usr/share/keyrings/debian-archive-keyring.gpg
    fi
    sources="# Added by PlantPulse scripts/setup.sh: Debian $TSDB_SOURCE_SUITE SOURCE packages
# only (Types: deb-src, so apt never installs $TSDB_SOURCE_SUITE binaries from it).
# Used to build the TimescaleDB extension for PostgreSQL $PG_MAJOR.
Types: deb-src
URIs: $archive_uri
Suites: $TSDB_SOURCE_SUITE
Components: main"
    if [ -n "$archive_key" ]; then
        sources+=$'\n'"Signed-By: $archive_key"
    fi
    if write_if_changed "$TSDB_SOURCES_FILE" "$sources"; then
        note "wrote $TSDB_SOURCES_FILE (deb-src $TSDB_SOURCE_SUITE from $archive_uri)"
    fi
fi

# Dashboard: npm for its pinned front-end packages (any Node.js >= 18 will do: keep one that
# is there), Debian's chromium + a font for the browser tests (tests/web).
command -v npm >/dev/null 2>&1 || pkgs+=(nodejs npm)
pkgs+=(chromium fonts-dejavu-core)

apt_install_missing "${pkgs[@]}"
# pg_ctlcluster & co. come from postgresql-common, psql from the client.
for cmd in pg_ctlcluster psql redis-server redis-cli mosquitto mosquitto_sub; do
    command -v "$cmd" >/dev/null 2>&1 || die "command '$cmd' not found after package installation"
done

# b. TimescaleDB --------------------------------------------------------------
# Same cmake flags as Debian's own package (debian/rules): Apache-2 code only,
# telemetry compiled out (this machine has no outbound network anyway).
if [ "$need_tsdb_build" = 1 ]; then
    [ "${PLANTPULSE_SKIP_APT:-0}" != 1 ] ||
        die "TimescaleDB is not installed ($TSDB_CONTROL) and PLANTPULSE_SKIP_APT=1 forbids fetching its source"
    [ -x "$PG_CONFIG" ] || die "$PG_CONFIG not found (postgresql-server-dev-$PG_MAJOR)"
    apt_update_once
    step "Fetching TimescaleDB source package from Debian $TSDB_SOURCE_SUITE"
    rm -rf "$BUILD_DIR/src"
    mkdir -p "$BUILD_DIR/src"
    (cd "$BUILD_DIR/src" &&
        apt-get -q -o APT::Sandbox::User=root source "timescaledb/$TSDB_SOURCE_SUITE" \
            >"$BUILD_DIR/source.log" 2>&1) || {
        tail -n 30 "$BUILD_DIR/source.log" >&2
        die "apt-get source timescaledb/$TSDB_SOURCE_SUITE failed (log: $BUILD_DIR/source.log)"
    }
    src_dir="$(find "$BUILD_DIR/src" -mindepth 1 -maxdepth 1 -type d -name 'timescaledb-*' | head -n 1)"
    [ -n "$src_dir" ] || die "no timescaledb-* directory after apt-get source"
    note "source: $(basename "$src_dir"); PostgreSQL $("$PG_CONFIG" --version)"
    step "Building TimescaleDB (Apache-2 edition) against $PG_CONFIG (log: $BUILD_DIR/build.log)"
    (
        cd "$src_dir"
        BUILD_FORCE_REMOVE=true bash ./bootstrap \
            -DAPACHE_ONLY=1 -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF \
            -DPG_CONFIG="$PG_CONFIG" \
            -DUSE_TELEMETRY=OFF -DSEND_TELEMETRY_DEFAULT=OFF \
            -DCMAKE_BUILD_TYPE=Release -DWARNINGS_AS_ERRORS=OFF
        cd build
        make -j"$(nproc)"
        make install
    ) >"$BUILD_DIR/build.log" 2>&1 || {
        tail -n 40 "$BUILD_DIR/build.log" >&2
        die "TimescaleDB build failed (log: $BUILD_DIR/build.log)"
    }
    [ -f "$TSDB_CONTROL" ] || die "TimescaleDB installed, but $TSDB_CONTROL is missing"
    note "installed $(grep -E '^default_version' "$TSDB_CONTROL" | tr -d "' ")"
    rm -rf "$BUILD_DIR/src"
else
    step "TimescaleDB already installed ($(grep -E '^default_version' "$TSDB_CONTROL" | tr -d "' "))"
fi

# c. PostgreSQL cluster: preload TimescaleDB, running -------------------------
step "PostgreSQL $PG_MAJOR/$PG_CLUSTER: shared_preload_libraries"
if [ ! -f "$PG_CONF_DIR/postgresql.conf" ]; then
    note "creating cluster $PG_MAJOR/$PG_CLUSTER"
    pg_createcluster --port "$PG_PORT" "$PG_MAJOR" "$PG_CLUSTER"
fi

pg_was_running=0
pg_running && pg_was_running=1

# Configured value (all config files, incl. our drop-in), falling back to the
# running value.
configured_libs="$(as_postgres "$PG_BIN/postgres" -D "$PG_CONF_DIR" -C shared_preload_libraries 2>/dev/null)" || {
    configured_libs=""
    [ "$pg_was_running" = 0 ] || configured_libs="$(pg_sql 'SHOW shared_preload_libraries')"
}
preload="$(printf '%s' "$configured_libs" | tr -d "\"' " |
    awk -v RS=, 'NF && $1 != "timescaledb" { printf "%s%s,", sep, $1 }')timescaledb"

if grep -Eq "^[[:space:]]*include_dir[[:space:]]*=?[[:space:]]*'conf\.d'" "$PG_CONF_DIR/postgresql.conf"; then
    # Read last among conf.d/*.conf, so it wins over other drop-ins.
    pg_dropin="$PG_CONF_DIR/conf.d/zz-plantpulse.conf"
else
    pg_dropin="$PG_CONF_DIR/plantpulse.conf"
    if ! grep -Eq "^[[:space:]]*include_if_exists[[:space:]]*=?[[:space:]]*'plantpulse\.conf'" \
        "$PG_CONF_DIR/postgresql.conf"; then
        printf "\n# Added by PlantPulse scripts/setup.sh\ninclude_if_exists = 'plantpulse.conf'\n" \
            >>"$PG_CONF_DIR/postgresql.conf"
    fi
fi
pg_conf_changed=0
if write_if_changed "$pg_dropin" "# Managed by PlantPulse scripts/setup.sh (development setup).
shared_preload_libraries = '$preload'
# No outbound network here: no telemetry / version checks. (setup.sh builds
# TimescaleDB without telemetry; this also covers a build that has it.)
timescaledb.telemetry_level = off"; then
    pg_conf_changed=1
    chown postgres:postgres "$pg_dropin"
    note "wrote $pg_dropin (shared_preload_libraries = '$preload')"
fi

if [ "$pg_was_running" = 0 ]; then
    step "Starting PostgreSQL $PG_MAJOR/$PG_CLUSTER"
    pg_ctl_cluster start || {
        tail -n 30 "$PG_LOG" >&2 || true
        die "could not start PostgreSQL $PG_MAJOR/$PG_CLUSTER"
    }
elif ! pg_preloaded || [ "$need_tsdb_build" = 1 ]; then
    step "Restarting PostgreSQL $PG_MAJOR/$PG_CLUSTER to load the (new) timescaledb library"
    pg_ctl_cluster restart || {
        tail -n 30 "$PG_LOG" >&2 || true
        die "could not restart PostgreSQL $PG_MAJOR/$PG_CLUSTER"
    }
elif [ "$pg_conf_changed" = 1 ]; then
    step "Reloading PostgreSQL configuration"
    pg_ctl_cluster reload
else
    note "running, timescaledb preloaded: no restart"
fi
pg_wait_ready
pg_preloaded || die "timescaledb is not in the running server's shared_preload_libraries"

# d. Passwordless TCP access for postgres (development) ------------------------
step "PostgreSQL: passwordless access as postgres on 127.0.0.1:$PG_PORT"
if pg_tcp_trust_ok; then
    note "ok"
else
    hba="$(pg_sql 'SHOW hba_file')"
    [ -f "$hba" ] || die "pg_hba.conf not found ($hba)"
    if grep -q '^# >>> plantpulse dev trust >>>' "$hba"; then
        die "trust lines are already in $hba, but psql -h 127.0.0.1 -U postgres still fails"
    fi
    note "NOTE: DEVELOPMENT SETUP - adding 'trust' for 127.0.0.1/32 and ::1/128 at the top of $hba"
    note "      (any local user can connect as any role without a password)."
    {
        printf '%s\n' \
            '# >>> plantpulse dev trust >>>' \
            '# Added by PlantPulse scripts/setup.sh: passwordless TCP from this machine.' \
            '# DEVELOPMENT ONLY. Remove this block on shared or production machines.' \
            'host    all    all    127.0.0.1/32    trust' \
            'host    all    all    ::1/128         trust' \
            '# <<< plantpulse dev trust <<<'
        cat "$hba"
    } >"$hba.plantpulse-tmp"
    chown --reference="$hba" "$hba.plantpulse-tmp"
    chmod --reference="$hba" "$hba.plantpulse-tmp"
    mv -f "$hba.plantpulse-tmp" "$hba"
    pg_ctl_cluster reload
    sleep 1
    pg_tcp_trust_ok || die "psql -h 127.0.0.1 -U postgres still needs a password after editing $hba"
fi

# e. Redis ---------------------------------------------------------------------
step "Redis on 127.0.0.1:6379"
if redis_ping; then
    note "ok"
else
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
        --appendonly no --dir /var/lib/redis --logfile /var/log/redis/plantpulse.log 9>&-
    for _ in $(seq 1 20); do
        redis_ping && break
        sleep 0.5
    done
    redis_ping || {
        tail -n 20 /var/log/redis/plantpulse.log >&2 || true
        die "Redis did not answer PING on 127.0.0.1:6379"
    }
    note "started"
fi

# f. Mosquitto -----------------------------------------------------------------
step "Mosquitto on 127.0.0.1:1883 (tuning drop-in $MOSQ_DROPIN)"
tuning="$(sed -n '/^# >>> plantpulse tuning >>>$/,/^# <<< plantpulse tuning <<<$/p' "$MOSQ_CONF_SRC")"
[ -n "$tuning" ] || die "no '# >>> plantpulse tuning >>>' section in $MOSQ_CONF_SRC"
mosq_changed=0
if write_if_changed "$MOSQ_DROPIN" "# Managed by PlantPulse scripts/setup.sh: a copy of the tuning section of
# scripts/mosquitto.conf. Edit that file and re-run scripts/setup.sh.
$tuning"; then
    mosq_changed=1
    note "wrote $MOSQ_DROPIN"
fi
if ! grep -Eq '^[[:space:]]*include_dir[[:space:]]+/etc/mosquitto/conf\.d/?[[:space:]]*$' "$MOSQ_MAIN_CONF"; then
    printf '\n# Added by PlantPulse scripts/setup.sh\ninclude_dir %s\n' "$MOSQ_DROPIN_DIR" >>"$MOSQ_MAIN_CONF"
    mosq_changed=1
    note "added 'include_dir $MOSQ_DROPIN_DIR' to $MOSQ_MAIN_CONF"
fi

mosq_start() {
    install -d -o mosquitto -g mosquitto /run/mosquitto /var/log/mosquitto /var/lib/mosquitto
    mosquitto -d -c "$MOSQ_MAIN_CONF" 9>&- || {
        tail -n 20 "$MOSQ_LOG" >&2 || true
        die "mosquitto -d -c $MOSQ_MAIN_CONF failed"
    }
}
if mosq_pid_alive; then
    if [ "$mosq_changed" = 1 ]; then
        pid="$(cat "$MOSQ_PID")"
        note "configuration changed: restarting broker (pid $pid)"
        kill "$pid"
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && die "mosquitto (pid $pid) did not stop"
        mosq_start
    else
        note "running, configuration unchanged: no restart"
    fi
elif mosq_version >/dev/null; then
    if [ "$mosq_changed" = 1 ]; then
        warn "a broker answers on 1883 but not from $MOSQ_PID; restart it yourself to apply $MOSQ_DROPIN"
    fi
else
    note "not running: starting"
    mosq_start
fi
mosq_ver=""
for _ in $(seq 1 10); do
    mosq_ver="$(mosq_version || true)"
    [ -n "$mosq_ver" ] && break
    sleep 0.5
done
[ -n "$mosq_ver" ] || {
    tail -n 20 "$MOSQ_LOG" >&2 || true
    die "Mosquitto does not answer on 127.0.0.1:1883"
}

# g. Python virtualenv -------------------------------------------------------------
step "Python virtualenv $VENV"
if [ -x "$VENV/bin/python" ] &&
    "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
    note "exists ($("$VENV/bin/python" --version 2>&1))"
else
    py="$(find_python)" || die "no python3 >= 3.11 with venv support found"
    note "creating with $py ($("$py" --version 2>&1))"
    rm -rf "$VENV"
    "$py" -m venv "$VENV"
fi
want_stamp="$(sha256sum "$REPO_ROOT/pyproject.toml" | cut -d' ' -f1)"
have_stamp="$(cat "$VENV_STAMP" 2>/dev/null || true)"
if [ "$want_stamp" = "$have_stamp" ]; then
    note "pyproject.toml unchanged since last install: skipping pip"
else
    step "pip install -e '.[dev]'"
    "$VENV/bin/python" -m pip install --progress-bar off -q -e "${REPO_ROOT}[dev]"
    printf '%s\n' "$want_stamp" >"$VENV_STAMP"
fi

# h. Dashboard assets ---------------------------------------------------------------
# The pinned npm packages (src/plantpulse/web/package-lock.json) are installed with npm ci and
# the files the pages load are copied to web/static/vendor (gitignored); again only when the
# lock file changed or a file is missing.
WEB_DIR="$REPO_ROOT/src/plantpulse/web"
WEB_STAMP="$WEB_DIR/static/vendor/.plantpulse-installed"
step "Dashboard assets (npm ci in src/plantpulse/web)"
web_want="$(sha256sum "$WEB_DIR/package-lock.json" "$WEB_DIR/package.json" | sha256sum | cut -d' ' -f1)"
if [ "$web_want" = "$(cat "$WEB_STAMP" 2>/dev/null || true)" ] &&
    [ -f "$WEB_DIR/static/vendor/uPlot.iife.min.js" ] && [ -f "$WEB_DIR/static/vendor/uPlot.min.css" ]; then
    note "package-lock.json unchanged since last install: skipping npm"
else
    (cd "$WEB_DIR" && npm ci --no-audit --no-fund --silent && npm run --silent vendor) ||
        die "npm ci / npm run vendor failed in $WEB_DIR"
    printf '%s\n' "$web_want" >"$WEB_STAMP"
    note "installed: $(cd "$WEB_DIR" && node -e 'const l = require("./package-lock.json");
console.log(Object.entries(l.packages).filter(([k]) => k).map(([k, v]) => `${k.slice(13)}@${v.version}`).join(" "))')"
fi
command -v chromium >/dev/null 2>&1 || die "chromium not found after package installation"

# i. Summary ---------------------------------------------------------------------
pg_ver="$(pg_sql 'SHOW server_version')"
ts_ver="$(pg_sql "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'")"
[ -n "$ts_ver" ] || die "PostgreSQL does not list timescaledb in pg_available_extensions"
redis_ver="$(redis-cli -h 127.0.0.1 -p 6379 info server | tr -d '\r' | awk -F: '$1 == "redis_version" { print $2 }')"
step "Done in ${SECONDS}s: PostgreSQL $pg_ver, TimescaleDB $ts_ver (available), Redis $redis_ver, ${mosq_ver}, Node.js $(node --version), $(chromium --version 2>/dev/null | head -n 1)"
