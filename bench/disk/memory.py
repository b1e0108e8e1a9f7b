"""The server's resident memory per idle HTTP connection and per open user file.

    python memory.py conns BASE_URL PID N
        opens N keep-alive connections, each answered once (GET /__lbheartbeat__),
        and holds them while the server's RSS is read.
    python memory.py users BASE_URL PID SECRET FIRST_UID COUNT
        GET /info/collections of COUNT users (files that exist and are not open):
        with max_open_users >= COUNT, each stays open.

Prints JSON: RSS (kB, /proc/PID/status VmRSS) and open descriptors before and after,
and the difference per connection or per user in bytes. Run it against a server that
has done nothing else since it started (plus, for `users`, the creation of the files
by an earlier process).
"""

import json
import resource
import socket
import sys
import threading
import time
import urllib.parse


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS")


def rss_parts(pid):
    """RssAnon, RssFile and RssShmem (kB): the heap, mapped files, shared memory (the
    WAL indexes SQLite maps)."""
    parts = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("RssAnon", "RssFile", "RssShmem"):
                parts[key] = int(line.split()[1])
    return parts


def fds(pid):
    import os
    return len(os.listdir("/proc/%d/fd" % pid))


def settle(pid):
    """RSS once it stops moving (allocators hand pages back with a delay)."""
    last = rss_kb(pid)
    for _ in range(20):
        time.sleep(0.5)
        now = rss_kb(pid)
        if abs(now - last) < 64:
            return now
        last = now
    return last


def conns(base, pid, n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 256)), hard))
    u = urllib.parse.urlparse(base)
    before, fd_before = settle(pid), fds(pid)
    held = []
    request = ("GET /__lbheartbeat__ HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (u.hostname, u.port)).encode()
    for _ in range(n):
        s = socket.create_connection((u.hostname, u.port))
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(4096)
        if not data.startswith(b"HTTP/1.1 200"):
            raise SystemExit("answer: %r" % data[:80])
        held.append(s)
    after, fd_after = settle(pid), fds(pid)
    print(json.dumps({"connections": n, "rss_kb_before": before, "rss_kb_after": after,
                      "parts_kb_after": rss_parts(pid),
                      "fds_before": fd_before, "fds_after": fd_after,
                      "bytes_per_connection": (after - before) * 1024 / n}))
    for s in held:
        s.close()


def users(base, pid, secret, first, count):
    import hawkauthlib
    import requests
    import tokenlib
    before, fd_before = settle(pid), fds(pid)
    errors = []

    def work(uids):
        session = requests.Session()
        manager = tokenlib.TokenManager(secret=secret)
        for uid in uids:
            token = manager.make_token({"uid": uid, "node": base, "fxa_uid": "light%d" % uid})
            req = requests.Request("GET", "%s/1.5/%d/info/collections" % (base, uid)).prepare()
            hawkauthlib.sign_request(req, token, manager.get_derived_secret(token))
            r = session.send(req, timeout=30)
            if r.status_code != 200:
                errors.append("%d: %d" % (uid, r.status_code))
                return

    uids = list(range(first, first + count))
    threads = [threading.Thread(target=work, args=(uids[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit("users: %s" % errors[0])
    after, fd_after = settle(pid), fds(pid)
    print(json.dumps({"users": count, "rss_kb_before": before, "rss_kb_after": after,
                      "parts_kb_after": rss_parts(pid),
                      "fds_before": fd_before, "fds_after": fd_after,
                      "bytes_per_user": (after - before) * 1024 / count}))


if __name__ == "__main__":
    mode, base, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "conns":
        conns(base, pid, int(sys.argv[4]))
    else:
        users(base, pid, sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
