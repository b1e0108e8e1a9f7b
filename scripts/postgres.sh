# Starts a throw-away PostgreSQL on 127.0.0.1 (from Debian's packages, installed when
# run as root without one), in a temp dir removed at exit. Sourced by scripts/test and
# scripts/cluster; sets SYNCSTORE_TEST_POSTGRES_URL (a superuser URL) unless it is set.
#
# The server has TLS on (ssl=on, a certificate for localhost and 127.0.0.1 signed by a
# throw-away CA made here with the openssl CLI); plain connections keep working, except
# for the superuser role syncstore_tls, which may only connect over TLS (pg_hba
# hostnossl ... reject). SYNCSTORE_TEST_POSTGRES_TLS_CA names the CA's certificate.

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
    make_test_certificates "$pgdir/tls"
    if [ "$(id -u)" = 0 ]; then
        chown -R postgres "$pgdir/tls"
    fi
    # First match wins: syncstore_tls over plain TCP is refused, everything else as initdb set it.
    { echo "hostnossl all syncstore_tls all reject"; cat "$pgdir/data/pg_hba.conf"; } >"$pgdir/hba"
    "${as_pg[@]}" cp "$pgdir/hba" "$pgdir/data/pg_hba.conf"
    "${as_pg[@]}" "$pg_dir_bin/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" -w \
        -o "-h 127.0.0.1 -p $port -k $pgdir -c fsync=off -c max_connections=300 -c ssl=on \
            -c ssl_cert_file=$pgdir/tls/server.crt -c ssl_key_file=$pgdir/tls/server.key" \
        start >/dev/null
    export SYNCSTORE_TEST_POSTGRES_URL="postgres://syncstore@127.0.0.1:$port/postgres"
    export SYNCSTORE_TEST_POSTGRES_TLS_CA="$pgdir/tls/ca.crt"
    "$pg_dir_bin/psql" "$SYNCSTORE_TEST_POSTGRES_URL" -qc "CREATE ROLE syncstore_tls LOGIN SUPERUSER" >/dev/null
    echo "PostgreSQL $("$pg_dir_bin/postgres" --version | awk '{print $3}') running on 127.0.0.1:$port"
}

# A CA and a server certificate for localhost and 127.0.0.1 (EC P-256, 30 days) in $1.
make_test_certificates() {
    local dir=$1
    if ! command -v openssl >/dev/null; then
        if [ "$(id -u)" = 0 ]; then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
        else
            echo "the openssl CLI is missing: run 'sudo apt-get install openssl'" >&2
            exit 1
        fi
    fi
    mkdir -p "$dir"
    (
        cd "$dir" || exit 1
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -subj /CN=syncstore-test-ca -days 30 -keyout ca.key -out ca.crt 2>/dev/null
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -subj /CN=localhost -keyout server.key -out server.csr 2>/dev/null
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >server.ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
            -extfile server.ext -out server.crt 2>/dev/null
        chmod 600 server.key ca.key
    )
}

stop_postgres() {
    if [ -n "${pgdir:-}" ]; then
        "${as_pg[@]}" "$pg_dir_bin/pg_ctl" -D "$pgdir/data" -m fast stop >/dev/null 2>&1 || true
        rm -rf "$pgdir"
    fi
}
