"""Where the bytes of user files go, and what a different layout would make of them.

    python3 analyze.py btrees FILE...     # mean pages and bytes per table/index (dbstat)
    python3 analyze.py variants FILE...   # each file rebuilt (VACUUM INTO) per variant

`btrees` needs an SQLite with the dbstat virtual table (Python's usually has it; the
server's bundled SQLite is built without it). `variants` copies each file, applies a
variant's change to the copy, rebuilds it with `VACUUM INTO` at the variant's page size
and reports the mean file bytes and disk blocks (`du`) per user, so that page sizes and
schema changes can be weighed on real files without changing the server.
"""

import os
import shutil
import sqlite3
import sys
import tempfile
from collections import defaultdict


def btrees(files):
    pages, used, sizes, free = defaultdict(int), defaultdict(int), [], 0
    for f in files:
        c = sqlite3.connect("file:%s?mode=ro" % f, uri=True)
        for name, n, u, size in c.execute(
            "SELECT name, count(*), sum(pgsize - unused), sum(pgsize) FROM dbstat GROUP BY name"
        ):
            pages[name] += n
            used[name] += u
        free += c.execute("PRAGMA freelist_count").fetchone()[0]
        sizes.append(os.path.getsize(f))
        c.close()
    n = len(files)
    print("| btree | pages per user | bytes used per user |")
    print("|---|---:|---:|")
    for name in sorted(pages, key=lambda k: -pages[k]):
        print("| %s | %.2f | %.0f |" % (name, pages[name] / n, used[name] / n))
    print("| (free pages) | %.2f | |" % (free / n))
    print("\n%d files, mean file %.0f bytes" % (n, sum(sizes) / n))


VARIANTS = {
    "as is (4 KB pages)": (4096, []),
    "2 KB pages": (2048, []),
    "1 KB pages": (1024, []),
    "4 KB, no bso_by_expiry": (4096, ["DROP INDEX bso_by_expiry"]),
    "4 KB, auto_vacuum off": (4096, ["PRAGMA auto_vacuum = NONE"]),
    "2 KB, no bso_by_expiry": (2048, ["DROP INDEX bso_by_expiry"]),
    "2 KB, auto_vacuum off": (2048, ["PRAGMA auto_vacuum = NONE"]),
    "1 KB, auto_vacuum off": (1024, ["PRAGMA auto_vacuum = NONE"]),
}


def blocks(path):
    return os.stat(path).st_blocks * 512


def variants(files):
    tmp = tempfile.mkdtemp()
    try:
        print("| layout | file bytes per user | du bytes per user | pages per user |")
        print("|---|---:|---:|---:|")
        for label, (page_size, steps) in VARIANTS.items():
            total = disk = npages = 0
            for i, f in enumerate(files):
                copy, out = os.path.join(tmp, "in.sqlite"), os.path.join(tmp, "out%d.sqlite" % i)
                for suffix in ("", "-wal"):
                    if os.path.exists(f + suffix):
                        shutil.copyfile(f + suffix, copy + suffix)
                c = sqlite3.connect(copy, isolation_level=None)
                for step in steps:
                    c.execute(step)
                c.execute("PRAGMA page_size = %d" % page_size)
                c.execute("VACUUM INTO ?", (out,))
                c.close()
                for suffix in ("", "-wal", "-shm"):
                    if os.path.exists(copy + suffix):
                        os.remove(copy + suffix)
                o = sqlite3.connect(out)
                assert o.execute("PRAGMA page_size").fetchone()[0] == page_size
                npages += o.execute("PRAGMA page_count").fetchone()[0]
                o.close()
                total += os.path.getsize(out)
                disk += blocks(out)
                os.remove(out)
            n = len(files)
            print("| %s | %.0f | %.0f | %.1f |" % (label, total / n, disk / n, npages / n))
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    {"btrees": btrees, "variants": variants}[sys.argv[1]](sys.argv[2:])
