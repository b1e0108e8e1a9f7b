#!/usr/bin/env python3
"""Interop check: drive a running syncstore with Mozilla's reference libraries.

Tokens are minted with PyPI's `tokenlib` and requests signed with `hawkauthlib`,
independently of syncstore's own code. Many users run concurrently; each writes,
lists with paging, updates, deletes and reads back its records. Also checks that
a token printed by `syncstore token` verifies with `tokenlib`.

Usage: interop.py BASE_URL SECRET SYNCSTORE_BINARY DATA_DIR
Exits non-zero, with a message, on the first disagreement.
"""

import concurrent.futures
import json
import subprocess
import sys

import hawkauthlib
import requests
import tokenlib

BASE, SECRET, BINARY, DATA_DIR = sys.argv[1:5]
USERS = 40
RECORDS = 37


class Client:
    def __init__(self, uid):
        self.uid = uid
        manager = tokenlib.TokenManager(secret=SECRET)
        self.token = manager.make_token({"uid": uid, "node": BASE, "fxa_uid": "f%d" % uid})
        self.key = manager.get_derived_secret(self.token)
        self.session = requests.Session()

    def request(self, method, path, body=None, headers=None, ctype="application/json"):
        url = "%s/1.5/%d%s" % (BASE, self.uid, path)
        data = None
        hdrs = dict(headers or {})
        if body is not None:
            data = body if isinstance(body, (bytes, str)) else json.dumps(body)
            hdrs["Content-Type"] = ctype
        req = requests.Request(method, url, data=data, headers=hdrs).prepare()
        hawkauthlib.sign_request(req, self.token, self.key)
        resp = self.session.send(req, timeout=30)
        if resp.status_code >= 500:
            raise AssertionError("%s %s -> %d %s" % (method, path, resp.status_code, resp.text))
        return resp


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def exercise(uid):
    c = Client(uid)
    check(c.request("DELETE", "").status_code == 200, "delete user")
    # Write in posts of 10, with sortindex, via JSON and newlines.
    records = [{"id": "r%03d" % i, "payload": "p%d-%d" % (uid, i), "sortindex": i} for i in range(RECORDS)]
    for start in range(0, RECORDS, 10):
        chunk = records[start:start + 10]
        if start % 20 == 0:
            r = c.request("POST", "/storage/history", chunk)
        else:
            body = "\n".join(json.dumps(b) for b in chunk)
            r = c.request("POST", "/storage/history", body, ctype="application/newlines")
        check(r.status_code == 200, "post: %d %s" % (r.status_code, r.text))
        check(sorted(r.json()["success"]) == [b["id"] for b in chunk], "post success list")
        check(r.json()["failed"] == {}, "post failed: %s" % r.json()["failed"])
    # List with paging, newest first.
    seen, offset = [], None
    while True:
        q = "?full=1&sort=index&limit=6" + ("&offset=" + offset if offset else "")
        r = c.request("GET", "/storage/history" + q)
        check(r.status_code == 200, "list")
        seen.extend(r.json())
        offset = r.headers.get("X-Weave-Next-Offset")
        if not offset:
            break
    check([b["id"] for b in seen] == ["r%03d" % i for i in reversed(range(RECORDS))], "paging by index")
    check(all(b["payload"] == "p%d-%s" % (uid, int(b["id"][1:])) for b in seen), "payloads")
    # Update one, conditional on its timestamp.
    r = c.request("GET", "/storage/history/r005")
    ts = r.headers["X-Last-Modified"]
    r = c.request("PUT", "/storage/history/r005", {"payload": "updated"}, {"X-If-Unmodified-Since": ts})
    check(r.status_code == 200, "put: %d" % r.status_code)
    r = c.request("PUT", "/storage/history/r005", {"payload": "stale"}, {"X-If-Unmodified-Since": ts})
    check(r.status_code == 412, "stale put must be 412, got %d" % r.status_code)
    # Delete some.
    check(c.request("DELETE", "/storage/history?ids=r000,r001").status_code == 200, "delete ids")
    check(c.request("DELETE", "/storage/history/r002").status_code == 200, "delete item")
    check(c.request("GET", "/storage/history/r002").status_code == 404, "deleted item is gone")
    # Read back.
    r = c.request("GET", "/storage/history/r005")
    check(r.json()["payload"] == "updated", "updated payload")
    counts = c.request("GET", "/info/collection_counts").json()
    check(counts == {"history": RECORDS - 3}, "counts %s" % counts)
    info = c.request("GET", "/info/collections")
    check(set(info.json()) == {"history"}, "info/collections")
    return uid


def batch_upload(uid=9999, total=10000, per_post=100):
    """Upload `total` records through one batch, `per_post` per POST, then read all back."""
    c = Client(uid)
    records = [{"id": "b%05d" % i, "payload": "batch-%d-%s" % (i, "x" * (i % 50))} for i in range(total)]
    chunks = [records[i:i + per_post] for i in range(0, total, per_post)]
    r = c.request("POST", "/storage/bookmarks?batch=true", chunks[0],
                  {"X-Weave-Total-Records": str(total)})
    check(r.status_code == 202, "batch start: %d %s" % (r.status_code, r.text))
    batch = r.json()["batch"]
    for chunk in chunks[1:-1]:
        r = c.request("POST", "/storage/bookmarks?batch=%s" % batch, chunk)
        check(r.status_code == 202 and not r.json()["failed"], "append: %d %s" % (r.status_code, r.text))
    check(c.request("GET", "/storage/bookmarks").json() == [], "nothing visible before commit")
    r = c.request("POST", "/storage/bookmarks?batch=%s&commit=true" % batch, chunks[-1])
    check(r.status_code == 200, "commit: %d %s" % (r.status_code, r.text))
    modified = r.json()["modified"]
    got, offset = {}, None
    while True:
        q = "?full=1&sort=oldest&limit=1000" + ("&offset=" + offset if offset else "")
        r = c.request("GET", "/storage/bookmarks" + q)
        for b in r.json():
            check(b["id"] not in got, "record %s returned twice" % b["id"])
            check(b["modified"] == modified, "one timestamp for the whole batch")
            got[b["id"]] = b["payload"]
        offset = r.headers.get("X-Weave-Next-Offset")
        if not offset:
            break
    check(got == {b["id"]: b["payload"] for b in records}, "all %d records back intact" % total)


def check_cli_token():
    out = subprocess.run(
        [BINARY, "token", "--uid", "4242", "--node", BASE, "--data-dir", DATA_DIR],
        check=True, capture_output=True, text=True, env={"SYNCSTORE_SECRETS": SECRET},
    ).stdout
    minted = json.loads(out)
    manager = tokenlib.TokenManager(secret=SECRET)
    data = manager.parse_token(minted["id"])
    check(data["uid"] == 4242, "tokenlib reads the uid")
    check(manager.get_derived_secret(minted["id"]) == minted["key"], "derived key matches tokenlib")
    # And that token works with hawkauthlib against the server.
    req = requests.Request("GET", "%s/1.5/4242/info/collections" % BASE).prepare()
    hawkauthlib.sign_request(req, minted["id"], minted["key"])
    check(requests.Session().send(req, timeout=30).status_code == 200, "cli token accepted")


def main():
    check_cli_token()
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        done = list(pool.map(exercise, range(1, USERS + 1)))
    check(len(done) == USERS, "all users done")
    batch_upload()
    print("interop: %d users x %d records, and 10000 records through batches of 100, "
          "via tokenlib + hawkauthlib: ok" % (USERS, RECORDS))


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print("interop FAILED: %s" % e, file=sys.stderr)
        sys.exit(1)
