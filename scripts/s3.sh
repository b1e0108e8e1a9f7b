# Starts a throw-away S3-compatible server on 127.0.0.1 (s3s-fs, from crates.io,
# installed once into target/s3s with cargo install and reused), storing in a temp dir
# removed at exit, with one bucket. Sourced by scripts/test; sets SYNCSTORE_TEST_S3_URL
# (the endpoint), SYNCSTORE_TEST_S3_BUCKET and SYNCSTORE_TEST_S3_ACCESS_KEY_ID /
# SYNCSTORE_TEST_S3_SECRET_ACCESS_KEY unless SYNCSTORE_TEST_S3_URL is set.

# s3s-fs 0.14 builds with rustc 1.92 (later versions need newer); --locked: the
# versions its release was tested with.
S3S_FS_VERSION=0.14.1

start_s3() {
    if [ -n "${SYNCSTORE_TEST_S3_URL:-}" ]; then
        return
    fi
    local bin=target/s3s/bin/s3s-fs
    if [ ! -x "$bin" ] || ! "$bin" --version 2>/dev/null | grep -q "$S3S_FS_VERSION"; then
        echo "installing s3s-fs $S3S_FS_VERSION into target/s3s (once)..."
        cargo install --quiet --locked "s3s-fs@$S3S_FS_VERSION" --features binary --root target/s3s
    fi
    s3dir=$(mktemp -d /tmp/syncstore-s3.XXXXXX)
    local port key secret
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    key="test$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
    secret=$(od -An -N18 -tx1 /dev/urandom | tr -d ' \n')
    mkdir -p "$s3dir/data/syncstore-test"
    "$bin" --host 127.0.0.1 --port "$port" --access-key "$key" --secret-key "$secret" \
        "$s3dir/data" >"$s3dir/log" 2>&1 &
    s3_pid=$!
    local i
    for i in $(seq 1 100); do
        if python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; then
            break
        fi
        if ! kill -0 "$s3_pid" 2>/dev/null; then
            echo "s3s-fs did not start:" >&2
            cat "$s3dir/log" >&2
            exit 1
        fi
        sleep 0.1
    done
    export SYNCSTORE_TEST_S3_URL="http://127.0.0.1:$port"
    export SYNCSTORE_TEST_S3_BUCKET=syncstore-test
    export SYNCSTORE_TEST_S3_ACCESS_KEY_ID="$key"
    export SYNCSTORE_TEST_S3_SECRET_ACCESS_KEY="$secret"
    echo "S3 (s3s-fs $S3S_FS_VERSION) running on 127.0.0.1:$port"
}

stop_s3() {
    if [ -n "${s3_pid:-}" ]; then
        kill "$s3_pid" 2>/dev/null || true
        wait "$s3_pid" 2>/dev/null || true
    fi
    if [ -n "${s3dir:-}" ]; then
        rm -rf "$s3dir"
    fi
}
