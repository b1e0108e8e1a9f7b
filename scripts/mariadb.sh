# Starts a throw-away MariaDB on 127.0.0.1 (from Debian's packages, installed when run
# as root without one), in a temp dir removed by stop_mariadb, for the tests that read
# the Python Sync server's and syncstorage-rs's MySQL databases (import-legacy). Sets
# SYNCSTORE_TEST_MYSQL_URL unless set.
# Access checks are off (--skip-grant-tables): it is a test server on loopback only.

start_mariadb() {
    if [ -n "${SYNCSTORE_TEST_MYSQL_URL:-}" ]; then
        return
    fi
    if [ ! -x /usr/sbin/mariadbd ]; then
        if [ "$(id -u)" = 0 ]; then
            echo "installing MariaDB from Debian's packages..."
            apt-get update -qq >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server >/dev/null 2>&1 || true
        fi
        if [ ! -x /usr/sbin/mariadbd ]; then
            echo "MariaDB is not installed: run 'sudo apt-get install mariadb-server' or set SYNCSTORE_TEST_MYSQL_URL" >&2
            exit 1
        fi
    fi
    mydir=$(mktemp -d /tmp/syncstore-mariadb.XXXXXX)
    local port user=()
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    if [ "$(id -u)" = 0 ]; then
        chown mysql "$mydir"
        user=(--user=mysql)
    fi
    mariadb-install-db --no-defaults --datadir="$mydir/data" "${user[@]}" \
        --auth-root-authentication-method=normal --skip-test-db >"$mydir/install.log" 2>&1
    /usr/sbin/mariadbd --no-defaults --datadir="$mydir/data" "${user[@]}" \
        --socket="$mydir/sock" --pid-file="$mydir/pid" --port="$port" --bind-address=127.0.0.1 \
        --skip-grant-tables --skip-log-bin --innodb-buffer-pool-size=64M >"$mydir/log" 2>&1 &
    mariadb_pid=$!
    for _ in $(seq 100); do
        if python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null; then
            export SYNCSTORE_TEST_MYSQL_URL="mysql://root@127.0.0.1:$port"
            echo "MariaDB $(/usr/sbin/mariadbd --version | awk '{print $3}') running on 127.0.0.1:$port"
            return
        fi
        sleep 0.2
    done
    echo "MariaDB did not start:" >&2
    cat "$mydir/log" >&2
    exit 1
}

stop_mariadb() {
    if [ -n "${mariadb_pid:-}" ]; then
        kill "$mariadb_pid" 2>/dev/null || true
        wait "$mariadb_pid" 2>/dev/null || true
    fi
    if [ -n "${mydir:-}" ]; then
        rm -rf "$mydir"
    fi
}
