"""Creates light Sync users over HTTP, as a Firefox's first sync writes them.

Each user gets meta/global (plain JSON) and crypto/keys, one client record, 5
bookmarks, 10 history entries and 1 tabs record, every payload shaped and sized like
Firefox's encrypted ones (a JSON object with base64 ciphertext, IV and a hex HMAC);
clients and tabs carry Firefox's 21-day TTL. Records go up in single-POST batches
(`?batch=true&commit=true`), as Firefox uploads them.

    python light_users.py BASE_URL SECRET FIRST_UID COUNT [THREADS]

Needs tokenlib, hawkauthlib and requests (the test venv has them). Prints the number
of users written; exits non-zero on any answer other than 200.
"""

import base64
import json
import random
import sys
import threading

import hawkauthlib
import requests
import tokenlib

BASE, SECRET = sys.argv[1], sys.argv[2]
TTL_21_DAYS = 21 * 24 * 3600
ENGINES = ["clients", "bookmarks", "history", "tabs", "passwords", "forms", "prefs", "addons"]


def b64(rng, n):
    return base64.b64encode(bytes(rng.getrandbits(8) for _ in range(n))).decode()


def encrypted(rng, cleartext_len):
    """A payload as Firefox sends it: AES-256-CBC ciphertext of `cleartext_len` bytes
    (padded to 16), its IV and an HMAC-SHA256, as JSON."""
    padded = (cleartext_len // 16 + 1) * 16
    return json.dumps({
        "ciphertext": b64(rng, padded),
        "IV": b64(rng, 16),
        "hmac": "%064x" % rng.getrandbits(256),
    })


def rid(rng):
    return base64.urlsafe_b64encode(bytes(rng.getrandbits(8) for _ in range(9))).decode()


def meta_global(rng):
    sync_id = lambda: rid(rng)
    return json.dumps({
        "syncID": sync_id(),
        "storageVersion": 5,
        "engines": {e: {"version": 1 if e != "bookmarks" else 2, "syncID": sync_id()} for e in ENGINES},
        "declined": [],
    })


class User:
    def __init__(self, uid):
        self.uid = uid
        manager = tokenlib.TokenManager(secret=SECRET)
        self.token = manager.make_token({"uid": uid, "node": BASE, "fxa_uid": "light%d" % uid})
        self.key = manager.get_derived_secret(self.token)
        self.rng = random.Random(uid)

    def send(self, session, method, path, body):
        req = requests.Request(
            method, "%s/1.5/%d%s" % (BASE, self.uid, path),
            data=json.dumps(body), headers={"Content-Type": "application/json"},
        ).prepare()
        hawkauthlib.sign_request(req, self.token, self.key)
        resp = session.send(req, timeout=30)
        if resp.status_code != 200:
            raise SystemExit("%s %s -> %d %s" % (method, path, resp.status_code, resp.text[:200]))
        return resp

    def first_sync(self, session):
        r = self.rng
        self.send(session, "PUT", "/storage/meta/global", {"payload": meta_global(r)})
        self.send(session, "PUT", "/storage/crypto/keys", {"payload": encrypted(r, 170)})
        batches = {
            "clients": [{"id": rid(r), "payload": encrypted(r, 380), "ttl": TTL_21_DAYS}],
            "bookmarks": [{"id": rid(r), "payload": encrypted(r, r.randint(220, 420)),
                           "sortindex": r.randint(0, 1000)} for _ in range(5)],
            "history": [{"id": rid(r), "payload": encrypted(r, r.randint(350, 1100)),
                         "sortindex": r.randint(0, 5000)} for _ in range(10)],
            "tabs": [{"id": rid(r), "payload": encrypted(r, 1800), "ttl": TTL_21_DAYS}],
        }
        for coll, records in batches.items():
            self.send(session, "POST", "/storage/%s?batch=true&commit=true" % coll, records)


def worker(uids, errors):
    session = requests.Session()
    try:
        for uid in uids:
            User(uid).first_sync(session)
    except BaseException as e:  # report, and let the main thread fail
        errors.append(e)


def main():
    first, count = int(sys.argv[3]), int(sys.argv[4])
    threads_n = int(sys.argv[5]) if len(sys.argv) > 5 else 4
    uids = list(range(first, first + count))
    errors = []
    threads = [threading.Thread(target=worker, args=(uids[i::threads_n], errors)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit("light users: %s" % errors[0])
    print(count)


if __name__ == "__main__":
    main()
