# Sourced by .ci/run: a throwaway PostgreSQL server on 127.0.0.1 for tests/test_pushdown.py.
#
# start_test_postgres creates a cluster in a temporary folder (as the `postgres` user when run
# as root: the server refuses to run as root), starts it on a free port, creates a role with a
# random password and a database, and exports REPORTGEN_TEST_PG_URL (without the password) and
# REPORTGEN_TEST_PG_PASSWORD. An EXIT trap stops the server and removes the folder.

TEST_PG_DIR=""
TEST_PG_BIN=""

_test_pg_as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

_test_pg_random() {
    python3 -c 'import secrets; print(secrets.token_hex(16))'
}

start_test_postgres() {
    TEST_PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$TEST_PG_BIN" ] || [ ! -x "$TEST_PG_BIN/initdb" ]; then
        echo "start_test_postgres: PostgreSQL is not installed (Debian package postgresql)" >&2
        return 1
    fi
    TEST_PG_DIR=$(mktemp -d /tmp/reportgen-pg.XXXXXX)
    trap stop_test_postgres EXIT
    local superuser_password user_password port
    superuser_password=$(_test_pg_random)
    user_password=$(_test_pg_random)
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    printf '%s\n' "$superuser_password" >"$TEST_PG_DIR/superuser_password"
    if [ "$(id -u)" = 0 ]; then
        chown -R postgres "$TEST_PG_DIR"
    fi
    if ! _test_pg_as_owner "$TEST_PG_BIN/initdb" -D "$TEST_PG_DIR/data" -U postgres -E UTF8 \
        --locale=C.UTF-8 -A scram-sha-256 --pwfile="$TEST_PG_DIR/superuser_password" \
        >"$TEST_PG_DIR/initdb.log" 2>&1; then
        cat "$TEST_PG_DIR/initdb.log" >&2
        return 1
    fi
    if ! _test_pg_as_owner "$TEST_PG_BIN/pg_ctl" -D "$TEST_PG_DIR/data" -l "$TEST_PG_DIR/server.log" \
        -w -t 60 -o "-p $port -k $TEST_PG_DIR -c listen_addresses=127.0.0.1 -c work_mem=64MB" \
        start >/dev/null; then
        cat "$TEST_PG_DIR/server.log" >&2
        return 1
    fi
    PGPASSWORD=$superuser_password "$TEST_PG_BIN/psql" -h 127.0.0.1 -p "$port" -U postgres \
        -d postgres -q -v ON_ERROR_STOP=1 \
        -c "CREATE ROLE reportgen LOGIN PASSWORD '$user_password'" \
        -c "CREATE DATABASE reportgen OWNER reportgen" || return 1
    export REPORTGEN_TEST_PG_URL="postgresql://reportgen@127.0.0.1:$port/reportgen"
    export REPORTGEN_TEST_PG_PASSWORD=$user_password
    echo "test PostgreSQL server on 127.0.0.1:$port ($("$TEST_PG_BIN/postgres" --version))"
}

stop_test_postgres() {
    if [ -n "$TEST_PG_DIR" ] && [ -d "$TEST_PG_DIR/data" ]; then
        _test_pg_as_owner "$TEST_PG_BIN/pg_ctl" -D "$TEST_PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    if [ -n "$TEST_PG_DIR" ]; then
        rm -rf "$TEST_PG_DIR"
    fi
}
