"""Writes one heavy Sync user over HTTP: HISTORY history entries and BOOKMARKS
bookmarks (Firefox-sized encrypted payloads, 100 records a POST), to weigh what a
page size costs a large file.

    python big_user.py BASE_URL SECRET UID HISTORY BOOKMARKS
"""

import json
import random
import sys

import requests

import light_users as lu


def main():
    uid, history, bookmarks = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    user, session = lu.User(uid), requests.Session()
    r = random.Random(uid)
    for coll, total, lo, hi in (("history", history, 350, 1100), ("bookmarks", bookmarks, 220, 420)):
        for start in range(0, total, 100):
            records = [{"id": lu.rid(r), "payload": lu.encrypted(r, r.randint(lo, hi)),
                        "sortindex": r.randint(0, 5000)} for _ in range(min(100, total - start))]
            user.send(session, "POST", "/storage/%s" % coll, records)
    print(json.dumps({"uid": uid, "history": history, "bookmarks": bookmarks}))


if __name__ == "__main__":
    main()
