# Starts a throw-away PostgreSQL on 127.0.0.1 (from Debian's packages, installed when
# run as root without one), in a temp dir removed at exit. Sourced by scripts/test and
# scripts/cluster; sets SYNCSTORE_TEST_POSTGRES_URL (a superuser URL) unless it is set.

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

start_postgres() {
    if [ -n "${SYNCSTORE_TEST_POSTGRES_URL:-}" ]; then
        return
    fi
    if [ -z "$(pg_bin)" ]; then
        if [ "$(id -u)" = 0 ]; then
            echo "installing PostgreSQL from Debian's packages..."
            apt-get update -qq >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
        else
            echo "PostgreSQL is not installed: run 'sudo apt-get install postgresql' or set SYNCSTORE_TEST_POSTGRES_URL" >&2
            exit 1
        fi
    fi
    pg_dir_bin=$(pg_bin)
    pgdir=$(mktemp -d /tmp/syncstore-pg.XXXXXX)
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    as_pg=()
    if [ "$(id -u)" = 0 ]; then
        # initdb refuses to run as root: run the server as the postgres system user.
        id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql postgres
        chown postgres "$pgdir"
        as_pg=(runuser -u postgres --)
    fi
    "${as_pg[@]}" "$pg_dir_bin/initdb" -D "$pgdir/data" -U syncstore --auth=trust -E UTF8 >/dev/null
    "${as_pg[@]}" "$pg_dir_bin/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" -w \
        -o "-h 127.0.0.1 -p $port -k $pgdir -c fsync=off -c max_connections=300" start >/dev/null
    export SYNCSTORE_TEST_POSTGRES_URL="postgres://syncstore@127.0.0.1:$port/postgres"
    echo "PostgreSQL $("$pg_dir_bin/postgres" --version | awk '{print $3}') running on 127.0.0.1:$port"
}

stop_postgres() {
    if [ -n "${pgdir:-}" ]; then
        "${as_pg[@]}" "$pg_dir_bin/pg_ctl" -D "$pgdir/data" -m fast stop >/dev/null 2>&1 || true
        rm -rf "$pgdir"
    fi
}
