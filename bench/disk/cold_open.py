"""Times `GET /info/collections` of users whose files are closed, one request at a
time on one keep-alive connection ("cold"), the same again right after ("rewarm":
each file left the LRU a moment ago, its WAL index kept), then of one user whose file
is open ("warm": the same request without the open), and prints JSON with the medians
and p99s in microseconds.

Start the server with `SYNCSTORE_SUMMARY_CACHE_USERS=0` (every info/collections reads
the file) and fewer open users than COUNT (each request of the cold pass opens a file
that is not open: the LRU evicts the least recently used, which is never the next).

    python cold_open.py BASE_URL SECRET FIRST_UID COUNT

Requests are signed before the clock starts: the times are the server's answer plus
the loopback round trip and http.client's parsing, the same for every binary.
"""

import http.client
import json
import sys
import time
import urllib.parse

import hawkauthlib
import requests
import tokenlib

BASE, SECRET = sys.argv[1], sys.argv[2]
FIRST, COUNT = int(sys.argv[3]), int(sys.argv[4])
WARM_REPEATS = 1000


def signed(uid):
    manager = tokenlib.TokenManager(secret=SECRET)
    token = manager.make_token({"uid": uid, "node": BASE, "fxa_uid": "light%d" % uid})
    key = manager.get_derived_secret(token)
    path = "/1.5/%d/info/collections" % uid
    req = requests.Request("GET", BASE + path).prepare()
    hawkauthlib.sign_request(req, token, key)
    return path, req.headers["Authorization"]


def timed(conn, path, auth):
    start = time.perf_counter()
    conn.request("GET", path, headers={"Authorization": auth})
    resp = conn.getresponse()
    resp.read()
    took = (time.perf_counter() - start) * 1e6
    if resp.status != 200:
        raise SystemExit("%s -> %d" % (path, resp.status))
    return took


def stats(xs):
    xs = sorted(xs)
    return {"n": len(xs), "median_us": xs[len(xs) // 2], "p99_us": xs[min(len(xs) - 1, int(len(xs) * 0.99))]}


def main():
    u = urllib.parse.urlparse(BASE)
    conn = http.client.HTTPConnection(u.hostname, u.port)
    cold = [timed(conn, *signed(uid)) for uid in range(FIRST, FIRST + COUNT)]
    # Again: each file was evicted from the LRU a moment ago (its WAL index kept).
    rewarm = [timed(conn, *signed(uid)) for uid in range(FIRST, FIRST + COUNT)]
    # A distinct signature per request: the replay cache refuses a repeated nonce.
    warm_requests = [signed(FIRST + COUNT - 1) for _ in range(WARM_REPEATS)]
    warm = [timed(conn, *r) for r in warm_requests]
    print(json.dumps({"cold": stats(cold), "rewarm": stats(rewarm), "warm": stats(warm)}))


if __name__ == "__main__":
    main()
