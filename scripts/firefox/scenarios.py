#!/usr/bin/env python3
"""Firefox scenarios against a running syncstore (started by tests/it/firefox.rs).

Usage: scenarios.py SCENARIO --out DIR --tokenserver URL --accounts-dir DIR --bin SYNCSTORE
                    --secret S [--db URL --nodes URL_A,URL_B --email E --password P --mail-dir DIR]
Every profile signs in on syncstore's own sign-in page (its only account setting is the
autoconfig pref) to accounts made with `syncstore account add` in the accounts server's
data dir (--accounts-dir). Prints `ok` and exits 0 when the scenario passed; otherwise
exits 1 with what failed and the tails of the Firefox sync logs.
"""

import argparse
import base64
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hawkauthlib  # noqa: E402
import requests  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.kdf.hkdf import HKDF  # noqa: E402
from harness import AUTOCONFIGURED, Firefox, Refuser, Served, SyncUser  # noqa: E402
from smtpsink import read_mails  # noqa: E402

ENGINES = ["bookmarks", "clients", "passwords", "history", "tabs"]


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


class TabPages:
    """Pages on 127.0.0.1 for the tabs the scenarios open (`url(name)`); `paths` lists
    the path of every GET it served, in order."""

    def __init__(self):
        paths = self.paths = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server API
                paths.append(self.path)
                body = b"<!doctype html><title>%s</title><p>a test page" % self.path.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, name):
        return "http://127.0.0.1:%d/page/%s" % (self.server.server_address[1], name)


class Run:
    """What a scenario gets: accounts on syncstore, profiles on demand, server access."""

    def __init__(self, opts):
        self.opts = opts
        os.makedirs(opts.out, exist_ok=True)
        self.refuser = Refuser()
        self.pages = TabPages()
        self.profiles = []
        self.accounts = {}
        # A server the scenario runs itself (restore_resync), stopped at the end.
        self.served = None

    def account(self, name):
        """(email, password) of the account `name`, made on first use by
        `syncstore account add --password-stdin` on the accounts server's data dir."""
        if name not in self.accounts:
            email, password = "%s@example.org" % name, "password of %s" % name
            self.admin(["account", "add", email, "--password-stdin", "--data-dir", self.opts.accounts_dir],
                       stdin=password + "\n")
            self.accounts[name] = (email, password)
        return self.accounts[name]

    def admin(self, args, stdin=None, ok=True):
        """Runs `syncstore ARGS` (an operator's command); its output."""
        env = dict(os.environ, SYNCSTORE_SECRETS=self.opts.secret)
        if self.opts.db:
            # Accounts live in the shared PostgreSQL when the tokenserver uses it.
            env["SYNCSTORE_TOKENSERVER_DATABASE_URL"] = self.opts.db
        out = subprocess.run([self.opts.bin, *args], input=stdin, capture_output=True, text=True, timeout=300,
                             env=env)
        step("syncstore %s -> %d\n%s%s" % (" ".join(args), out.returncode, out.stdout, out.stderr))
        check(out.returncode == 0 or not ok, "syncstore %s failed" % " ".join(args))
        return out

    def firefox(self, name, account, device=None):
        """A new Firefox profile signed in to `account` (a name) by typing its email and
        password into syncstore's sign-in page, its device named `device`."""
        ff = self.fresh(name)
        email, password = self.account(account)
        sign_in_on_page(ff, email, password, "Signed in")
        state = ff.js(SIGNED_IN, 60000, True)
        check(not state.get("timedOut") and state["user"]["email"] == email,
              "%s did not finish signing in: %r" % (name, state))
        ff.account = account
        ff.device_name = device or "profile-" + name
        ff.js(SET_DEVICE_NAME, ff.device_name)
        # What FxA's push message "device connected" does on the account's other devices
        # (no push service here): they fetch the device list again.
        for other in self.profiles:
            if other is not ff and getattr(other, "account", None) == account:
                other.js(DEVICE_CONNECTED, ff.device_name)
        return ff

    def fresh(self, name):
        """A new Firefox profile whose only account setting is the autoconfig pref
        pointing at syncstore (signed in to nothing)."""
        step("start Firefox profile %s (autoconfig %s)" % (name, self.opts.tokenserver))
        ff = Firefox(name, self.opts.out, self.opts.tokenserver, self.refuser)
        self.profiles.append(ff)
        return ff

    def server(self, account):
        """The account's storage as seen over HTTP, with the access token of the first
        profile signed in to it."""
        ff = next(p for p in self.profiles if getattr(p, "account", None) == account)
        return page_user(self, ff)

    def syncstore(self, *args):
        """Runs a syncstore admin command on the shared assignment database."""
        env = dict(os.environ, SYNCSTORE_TOKENSERVER_DATABASE_URL=self.opts.db, SYNCSTORE_SECRETS=self.opts.secret)
        data = os.path.join(self.opts.out, "admin-data")
        os.makedirs(data, exist_ok=True)
        out = subprocess.run(
            [self.opts.bin, *args, "--data-dir", data], env=env, capture_output=True, text=True, timeout=300
        )
        step("syncstore %s -> %d\n%s%s" % (" ".join(args), out.returncode, out.stdout, out.stderr))
        check(out.returncode == 0, "syncstore %s failed" % " ".join(args))
        return out.stdout

    def close(self):
        for ff in self.profiles:
            ff.close()
        self.pages.server.shutdown()
        if self.served:
            self.served.stop()


def step(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


DEVICE_CONNECTED = """
Services.obs.notifyObservers(null, "fxaccounts:device_connected", args[0]);
for (let i = 0; i < 200; i++) {
  if ((fxAccounts.device.recentDeviceList || []).some(d => d.name == args[0])) return;
  // The push handler fetches the list once; on a loaded machine that fetch can come
  // before the new device's registration landed, so fetch again (as Firefox's own
  // device-list UI does) until it shows.
  if (i % 10 == 9) await fxAccounts.device.refreshDeviceList({ ignoreCached: true });
  await sleep(100);
}
throw new Error("the device list never showed " + args[0]);
"""

SET_DEVICE_NAME = """
fxAccounts.device.setLocalName(args[0]);
await fxAccounts.device.updateDeviceRegistration();
"""

# --- Firefox-side data ------------------------------------------------------------------

ADD_BOOKMARKS = """
const [prefix, count] = args;
const children = [];
for (let i = 0; i < count; i++) children.push({ url: `http://example.com/${prefix}/${i}`, title: `${prefix} ${i}` });
await PlacesUtils.bookmarks.insertTree({ guid: PlacesUtils.bookmarks.toolbarGuid, children });
"""

BOOKMARKS = """
const found = [];
const walk = node => {
  if (node.uri && node.uri.startsWith(args[0])) found.push({ url: node.uri, title: node.title, guid: node.guid });
  (node.children || []).forEach(walk);
};
walk(await PlacesUtils.promiseBookmarksTree(PlacesUtils.bookmarks.rootGuid));
return found;
"""

ADD_LOGIN = """
const existing = await Services.logins.searchLoginsAsync({ origin: args[0] });
if (existing.length) throw new Error("already there: " + JSON.stringify(existing.map(l => [l.origin, l.username, l.timeCreated])));
const info = Cc["@mozilla.org/login-manager/loginInfo;1"].createInstance(Ci.nsILoginInfo);
info.init(args[0], args[0], null, args[1], args[2], "user", "pass");
await Services.logins.addLoginAsync(info);
"""

LOGINS = """
const all = await Services.logins.getAllLogins();
return all.filter(l => !l.origin.startsWith("chrome:")).map(l => ({ origin: l.origin, username: l.username, password: l.password }));
"""

ADD_VISIT = """
await PlacesUtils.history.insert({ url: args[0], title: args[1],
  visits: [{ date: new Date(), transition: PlacesUtils.history.TRANSITIONS.TYPED }] });
"""

VISIT = """
const page = await PlacesUtils.history.fetch(args[0]);
return page ? { url: page.url.href, title: page.title } : null;
"""

OPEN_TAB = """
const win = Services.wm.getMostRecentWindow("navigator:browser");
const tab = win.gBrowser.addTab(args[0], { triggeringPrincipal: Services.scriptSecurityManager.getSystemPrincipal() });
for (let i = 0; i < 200 && tab.linkedBrowser.currentURI.spec != args[0]; i++) await sleep(50);
return tab.linkedBrowser.currentURI.spec;
"""

REMOTE_TABS = """
const { SyncedTabs } = ChromeUtils.importESModule("resource://services-sync/SyncedTabs.sys.mjs");
const clients = await SyncedTabs.getTabClients();
return clients.map(c => ({ name: c.name, urls: c.tabs.map(t => t.url) }));
"""

CLIENTS = """
const engine = Weave.Service.clientsEngine;
return { local: { id: engine.localID, name: engine.localName },
         remote: engine.remoteClients.map(c => ({ id: c.id, name: c.name, fxaDeviceId: c.fxaDeviceId })),
         fxaDevices: (fxAccounts.device.recentDeviceList || []).map(d => ({ id: d.id, name: d.name })) };
"""


# --- Scenarios ----------------------------------------------------------------------------


def first_sync(run):
    """A new account's first sync leaves meta/global with engines, crypto/keys, a client."""
    a = run.firefox("A", "first")
    a.sync()
    s = run.server("first")
    meta = s.get("/storage/meta/global")
    payload = json.loads(meta["payload"])
    step("meta/global: %s" % payload)
    check(payload.get("storageVersion") == 5, "storageVersion: %r" % payload)
    for engine in ENGINES:
        check(engine in payload.get("engines", {}), "meta/global engines lack %s: %r" % (engine, payload))
    keys = s.get("/storage/crypto/keys")
    check(json.loads(keys["payload"]).get("ciphertext"), "crypto/keys is not encrypted: %r" % keys)
    clients = s.records("clients")
    check(len(clients) == 1, "one client record expected: %r" % clients)
    check(s.get("/info/collections").keys() >= {"meta", "crypto", "clients"}, "info/collections")
    a.sync()  # a second sync is clean too
    check(json.loads(s.get("/storage/meta/global")["payload"]) == payload, "meta/global changed on the second sync")


def two_profiles(run, account):
    """Profiles A and B on one account, both past their first sync."""
    a = run.firefox("A", account)
    a.sync()
    b = run.firefox("B", account)
    b.sync()
    return a, b


def make_data_on_a(run, a):
    """Bookmarks, a login, a visit and an open tab on A, synced."""
    step("A: 3 bookmarks, a login, a history visit, an open tab")
    a.js(ADD_BOOKMARKS, "mine", 3)
    a.js(ADD_LOGIN, "https://login.example.com", "alice", "s3cret")
    a.js(ADD_VISIT, "http://history.example.com/visited", "Visited page")
    tab = run.pages.url("fromA")
    check(a.js(OPEN_TAB, tab) == tab, "the tab did not load")
    a.sync()
    return tab


def check_data_on(ff, tab, from_name):
    marks = sorted(b["title"] for b in ff.js(BOOKMARKS, "http://example.com/mine/"))
    check(marks == ["mine 0", "mine 1", "mine 2"], "%s's bookmarks: %r" % (ff.name, marks))
    logins = ff.js(LOGINS)
    check(
        logins == [{"origin": "https://login.example.com", "username": "alice", "password": "s3cret"}],
        "%s's logins: %r" % (ff.name, logins),
    )
    visit = ff.js(VISIT, "http://history.example.com/visited")
    check(visit and visit["title"] == "Visited page", "%s's history: %r" % (ff.name, visit))
    tabs = ff.js(REMOTE_TABS)
    check(
        any(c["name"] == "profile-" + from_name and tab in c["urls"] for c in tabs),
        "%s's remote tabs lack %s from %s: %r" % (ff.name, tab, from_name, tabs),
    )


def data_reaches_b(run):
    """Bookmarks, a saved login, history and open tabs made on A appear on B."""
    a, b = two_profiles(run, "shared")
    tab = make_data_on_a(run, a)
    b.sync()
    check_data_on(b, tab, "A")
    s = run.server("shared")
    for coll in ("bookmarks", "passwords", "history", "tabs"):
        check(s.records(coll), "the server has no %s" % coll)


EDIT_ON_B = """
const marks = [];
const walk = node => {
  if (node.uri && node.uri.startsWith("http://example.com/mine/")) marks.push(node);
  (node.children || []).forEach(walk);
};
walk(await PlacesUtils.promiseBookmarksTree(PlacesUtils.bookmarks.rootGuid));
marks.sort((x, y) => x.title.localeCompare(y.title));
await PlacesUtils.bookmarks.update({ guid: marks[0].guid, title: "renamed on B" });
await PlacesUtils.bookmarks.remove(marks[1].guid);
const [login] = await Services.logins.searchLoginsAsync({ origin: "https://login.example.com" });
const changed = login.clone();
changed.password = "changed-on-B";
await Services.logins.modifyLoginAsync(login, changed);
await PlacesUtils.history.remove("http://history.example.com/visited");
const info = Cc["@mozilla.org/login-manager/loginInfo;1"].createInstance(Ci.nsILoginInfo);
info.init("https://second.example.com", "https://second.example.com", null, "bob", "pw", "u", "p");
await Services.logins.addLoginAsync(info);
"""

DELETE_LOGIN = """
const [login] = await Services.logins.searchLoginsAsync({ origin: args[0] });
await Services.logins.removeLoginAsync(login);
"""


def edits_reach_a(run):
    """Edits and deletions made on B reach A."""
    a, b = two_profiles(run, "edits")
    tab = make_data_on_a(run, a)
    b.sync()
    check_data_on(b, tab, "A")
    step("B: rename a bookmark, delete one, change a login's password, delete a visit, add a login")
    b.js(EDIT_ON_B)
    b.sync()
    a.sync()
    marks = sorted(x["title"] for x in a.js(BOOKMARKS, "http://example.com/mine/"))
    check(marks == ["mine 2", "renamed on B"], "A's bookmarks after B's edits: %r" % marks)
    logins = sorted((x["origin"], x["password"]) for x in a.js(LOGINS))
    check(
        logins == [("https://login.example.com", "changed-on-B"), ("https://second.example.com", "pw")],
        "A's logins after B's edits: %r" % logins,
    )
    check(a.js(VISIT, "http://history.example.com/visited") is None, "the visit B deleted is still on A")
    step("B: delete a login")
    b.js(DELETE_LOGIN, "https://second.example.com")
    b.sync()
    a.sync()
    logins = sorted(x["origin"] for x in a.js(LOGINS))
    check(logins == ["https://login.example.com"], "A's logins after B's deletion: %r" % logins)


def devices(run):
    """Both profiles see each other as devices (the clients engine's remote clients)."""
    a, b = two_profiles(run, "devices")
    a.sync()
    ca, cb = a.js(CLIENTS), b.js(CLIENTS)
    step("A's clients: %s\nB's clients: %s" % (ca, cb))
    check(
        [(c["id"], c["name"]) for c in ca["remote"]] == [(cb["local"]["id"], "profile-B")],
        "A's remote clients: %r, B is %r" % (ca["remote"], cb["local"]),
    )
    check(
        [(c["id"], c["name"]) for c in cb["remote"]] == [(ca["local"]["id"], "profile-A")],
        "B's remote clients: %r, A is %r" % (cb["remote"], ca["local"]),
    )
    check(len(run.server("devices").records("clients")) == 2, "the server holds two client records")


def many_bookmarks(run):
    """200 bookmarks made at once go up in one sync (batch uploads) and all reach B."""
    a, b = two_profiles(run, "many")
    step("A: 200 bookmarks")
    a.js(ADD_BOOKMARKS, "many", 200)
    result = a.sync(engines=["bookmarks"])
    posts = [line for line in result["lines"] if "POST success 200" in line and "/storage/bookmarks" in line]
    check(any("batch=" in line for line in posts), "no batch upload of bookmarks: %r" % posts)
    step("%d bookmark POSTs:\n%s" % (len(posts), "\n".join(posts)))
    check(len(run.server("many").records("bookmarks")) >= 200, "the server has fewer than 200 bookmarks")
    b.sync()
    marks = b.js(BOOKMARKS, "http://example.com/many/")
    check(len(marks) == 200, "B has %d of the 200 bookmarks" % len(marks))
    check(
        sorted(m["title"] for m in marks) == sorted("many %d" % i for i in range(200)),
        "B's bookmark titles differ",
    )


def second_account(run):
    """A second account on the same server sees none of the first's data."""
    a = run.firefox("A", "one")
    a.sync()
    make_data_on_a(run, a)
    c = run.firefox("C", "two")
    c.sync()
    check(c.js(BOOKMARKS, "http://example.com/mine/") == [], "C sees A's bookmarks")
    check(c.js(LOGINS) == [], "C sees A's logins")
    check(c.js(VISIT, "http://history.example.com/visited") is None, "C sees A's history")
    check(c.js(REMOTE_TABS) == [], "C sees A's tabs")
    check(c.js(CLIENTS)["remote"] == [], "C sees A as a device")
    one, two = run.server("one"), run.server("two")
    check(one.uid != two.uid, "both accounts got uid %s" % one.uid)
    check(len(two.records("clients")) == 1, "account two holds more than C's client record")
    roots = {"menu", "toolbar", "unfiled", "mobile", "places"}
    shared = (two.records("bookmarks").keys() & one.records("bookmarks").keys()) - roots
    check(not shared, "bookmark records of account one in account two: %r" % shared)
    a.sync()
    check(len(one.records("clients")) == 1, "account one holds more than A's client record")


def sync_through_move(ff, why):
    """Syncs after a node change: a 401 from the old node is allowed once, then clean."""
    step("%s syncs after %s" % (ff.name, why))
    first = ff.sync(allow=[(401, "")])
    step("%s: first sync ok=%s, failed requests %s" % (ff.name, first["ok"], first["failed"]))
    check(401 in first["failed"], "%s's first sync after %s met no 401 from the old node" % (ff.name, why))
    second = ff.sync()
    return first, second


def node_drains(run):
    """Node A drained live: both profiles keep syncing on B, nothing re-uploaded; then
    node B drained plainly: Firefox starts over on A and data still reaches the other."""
    node_a, node_b = run.opts.nodes.split(",")
    a, b = two_profiles(run, "mover")
    step("A: 20 bookmarks")
    a.js(ADD_BOOKMARKS, "mine", 20)
    a.sync()
    b.sync()
    s = run.server("mover")
    check(s.endpoint.startswith(node_a + "/"), "the user is not on node A: %s" % s.endpoint)
    before = {c: s.records(c) for c in ("bookmarks", "meta", "crypto")}
    check(len(before["bookmarks"]) > 20, "bookmarks on the server: %r" % before["bookmarks"])

    run.syncstore("node", "set", node_b, "--available", "1000")
    run.syncstore("node", "drain", node_a, "--live")
    for ff in (a, b):
        _, second = sync_through_move(ff, "the live drain")
        uploads = [x for x in second["lines"] if "POST success" in x or "PUT success" in x]
        check(not any("/storage/bookmarks" in x for x in uploads), "bookmarks re-uploaded: %r" % uploads)
    s = run.server("mover")
    check(s.endpoint.startswith(node_b + "/"), "the user is not on node B: %s" % s.endpoint)
    after = {c: s.records(c) for c in ("bookmarks", "meta", "crypto")}
    check(after == before, "records changed by the live move:\nbefore %r\nafter %r" % (before, after))
    step("A: a bookmark after the live move")
    a.js(ADD_BOOKMARKS, "live", 1)
    a.sync()
    b.sync()
    check(len(b.js(BOOKMARKS, "http://example.com/live/")) == 1, "B lacks A's bookmark made on node B")

    run.syncstore("node", "set", node_a, "--draining", "false", "--available", "1000")
    run.syncstore("node", "drain", node_b)
    # Firefox asks for a new token when its token expires (the tokenserver issues short
    # ones here); the tokenserver then puts the user on node A with a new uid.
    step("waiting for the profiles' tokens to expire")
    time.sleep(run.opts.token_secs)
    # The new token names node A, Firefox still has node B's URL: a 401, then a start
    # on the empty node (no meta/global yet: 404), uploading everything.
    check(not a.sync(allow=[(401, "")])["ok"], "A's first sync after the plain drain saw no 401")
    a.sync(allow=[(404, "/storage/meta/global")])
    s = run.server("mover")
    check(s.endpoint.startswith(node_a + "/"), "the user is not back on node A: %s" % s.endpoint)
    check(len(s.records("bookmarks")) > 21, "A did not upload its bookmarks to node A again")
    step("A: a bookmark after the plain drain")
    a.js(ADD_BOOKMARKS, "plain", 1)
    a.sync()
    check(not b.sync(allow=[(401, "")])["ok"], "B's first sync after the plain drain saw no 401")
    b.sync()
    for prefix, n in (("mine", 20), ("live", 1), ("plain", 1)):
        got = b.js(BOOKMARKS, "http://example.com/%s/" % prefix)
        check(len(got) == n, "B has %d %s bookmarks, not %d" % (len(got), prefix, n))
    a.sync()
    check([c["name"] for c in a.js(CLIENTS)["remote"]] == ["profile-B"], "A no longer sees B")
    check([c["name"] for c in b.js(CLIENTS)["remote"]] == ["profile-A"], "B no longer sees A")


# --- Signing in through syncstore's own pages -----------------------------------------------

CONNECT_URI = """
const { FxAccountsConfig } = ChromeUtils.importESModule("resource://gre/modules/FxAccountsConfig.sys.mjs");
const url = await FxAccountsConfig.promiseConnectAccountURI("test");
const prefs = {};
for (const p of args[0]) prefs[p] = Services.prefs.getStringPref(p, "");
return { url, prefs };
"""

SIGNED_IN = """
const deadline = Date.now() + args[0];
for (;;) {
  const user = await fxAccounts.getSignedInUser();
  if (!args[1] || (user && user.verified && Weave.Status.checkSetup() == "success.status_ok")) {
    return { user, setup: Weave.Status.checkSetup() };
  }
  if (Date.now() > deadline) return { user, setup: Weave.Status.checkSetup(), timedOut: true };
  await sleep(200);
}
"""

SYNC_TOKEN = """
const SCOPE = "https://identity.mozilla.com/apps/oldsync";
const token = await fxAccounts.getOAuthToken({ scope: SCOPE });
const key = await fxAccounts.keys.getKeyForScope(SCOPE);
return [token, key.kid, key.k];
"""


def independent_sync_key(origin, email, password):
    """kid fingerprint and key of Sync's scoped key, from kB as PyPI's PyFxA (an
    independent onepw client) fetches it: b64url(SHA-256(kB)[:16]) and
    b64url(HKDF-SHA256(kB, info "identity.mozilla.com/picl/v1/oldsync", 64 bytes)).
    Run apart, in a clean interpreter."""
    out = subprocess.run([sys.executable, "-c", PYFXA_SYNC_KEY, origin, email, password],
                         capture_output=True, text=True, timeout=120, cwd="/")
    check(out.returncode == 0, "PyFxA: %s%s" % (out.stdout, out.stderr))
    return json.loads(out.stdout)


PYFXA_SYNC_KEY = """
import base64, hashlib, json, sys
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from fxa.core import Client
origin, email, password = sys.argv[1:]
session = Client(origin + "/v1").login(email, password, keys=True)
kb = session.fetch_keys()[1]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
key = HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=b"identity.mozilla.com/picl/v1/oldsync").derive(kb)
session.destroy_session()
print(json.dumps([b64(hashlib.sha256(kb).digest()[:16]), b64(key)]))
"""


def sign_in_on_page(ff, email, password, expect, button="button[type=submit]", navigate=True, invite=None):
    """Opens Firefox's own sign-in URL (from its autoconfigured FxAccountsConfig, whose
    resolved URLs are checked), types the email and password (and `invite` into the
    "Invite code" field, which must be shown) into the page in the content context and
    clicks `button`; waits for the page's status to contain `expect`. `navigate=False`:
    types into the page already open. Returns the URL and the status shown."""
    url = None
    if navigate:
        origin = ff.autoconfig
        got = ff.js(CONNECT_URI, list(AUTOCONFIGURED))
        step("%s: sign-in URL %s; prefs %s" % (ff.name, got["url"], got["prefs"]))
        want = {
            "identity.fxaccounts.auth.uri": origin + "/v1",
            "identity.fxaccounts.remote.oauth.uri": origin + "/v1",
            "identity.fxaccounts.remote.profile.uri": origin + "/profile/v1",
            "identity.fxaccounts.remote.root": origin,
            "identity.sync.tokenserver.uri": origin + "/1.0/sync/1.5",
        }
        for pref, value in want.items():
            check(got["prefs"][pref] == value, "autoconfig: %s is %r, not %r" % (pref, got["prefs"][pref], value))
        url = got["url"]
        check(url.startswith(origin + "/?") and "keys_jwk=" in url and "code_challenge=" in url,
              "not an OAuth sign-in URL on syncstore: %s" % url)
    m = ff.m
    m.context("content")
    try:
        if navigate:
            m.navigate(url)
        email_input, password_input = m.find("input[type=email]"), m.find("input[type=password]")
        m.clear(email_input)
        m.send_keys(email_input, email)
        m.clear(password_input)
        m.send_keys(password_input, password)
        if invite is not None:
            invite_input = m.find("#invite")
            check(m.displayed(invite_input), "the page shows no \"Invite code\" field")
            m.clear(invite_input)
            m.send_keys(invite_input, invite)
        m.click(m.find(button))
        # The click handler shows "Signing in…" before anything else: wait for the outcome.
        status = page_outcome(m, WORKING)
        step("%s: the page says %r" % (ff.name, status))
        check(expect in status, "the page says %r, not %r" % (status, expect))
    finally:
        m.context("chrome")
    return url, status


WORKING = "Signing in\u2026"
CHANGING = "Changing password\u2026"
DELETING = "Deleting the account\u2026"


def page_outcome(m, *busy):
    """Content context: the page's status line once it shows an outcome, i.e. neither
    nothing nor one of the `busy` texts (what the page shows while it works); waits at
    most 120 s."""
    status = ""
    deadline = time.monotonic() + 120
    while status in ("", *busy) and time.monotonic() < deadline:
        time.sleep(0.2)
        status = m.text(m.find("#status"))
    return status


def page_user(run, ff):
    """The account's storage as seen over HTTP, with the access token Firefox holds."""
    token, kid, _ = ff.js(SYNC_TOKEN)
    return SyncUser(run.opts.tokenserver, (token, kid))


def page_sign_in(run):
    """A profile with only the autoconfig pref signs in on syncstore's page: Firefox
    completes the OAuth flow itself, Sync is configured and its first sync succeeds."""
    a = run.fresh("A")
    url, _ = sign_in_on_page(a, run.opts.email, run.opts.password, "Signed in")
    r = requests.get(url, timeout=30)
    csp = r.headers.get("Content-Security-Policy", "")
    check(r.status_code == 200 and "script-src 'self'" in csp, "page headers: %d %r" % (r.status_code, r.headers))
    state = a.js(SIGNED_IN, 60000, True)
    step("A: %s" % state)
    check(not state.get("timedOut"), "Firefox did not finish signing in: %r" % state)
    check(state["user"]["email"] == run.opts.email and state["user"]["verified"], "signed-in user: %r" % state)
    _, kid, k = a.js(SYNC_TOKEN)
    fingerprint, key = independent_sync_key(run.opts.tokenserver, run.opts.email, run.opts.password)
    check(kid.split("-", 1)[1] == fingerprint and k == key,
          "Firefox's Sync key (from the page's JWE) differs from PyFxA's derivation from kB: %s" % kid)
    a.sync()
    s = page_user(run, a)
    payload = json.loads(s.get("/storage/meta/global")["payload"])
    step("meta/global: %s" % payload)
    check(payload.get("storageVersion") == 5, "storageVersion: %r" % payload)
    check(json.loads(s.get("/storage/crypto/keys")["payload"]).get("ciphertext"), "crypto/keys")
    a.sync()


def page_two_profiles(run):
    """A wrong password on B's page shows the error and signs nothing in; then B signs in
    on the page too and a bookmark made on A reaches B."""
    a = run.fresh("A")
    sign_in_on_page(a, run.opts.email, run.opts.password, "Signed in")
    check(not a.js(SIGNED_IN, 60000, True).get("timedOut"), "A did not finish signing in")
    a.sync()
    a.js(ADD_BOOKMARKS, "page", 2)
    a.sync()
    b = run.fresh("B")
    sign_in_on_page(b, run.opts.email, run.opts.password + "-wrong", "Incorrect password")
    state = b.js(SIGNED_IN, 0, False)
    check(state["user"] is None, "a wrong password signed B in: %r" % state)
    sign_in_on_page(b, run.opts.email, run.opts.password, "Signed in")
    check(not b.js(SIGNED_IN, 60000, True).get("timedOut"), "B did not finish signing in")
    b.sync()
    got = b.js(BOOKMARKS, "http://example.com/page/")
    check(len(got) == 2, "B has %d of A's bookmarks: %r" % (len(got), got))


def page_sign_up(run):
    """With sign-ups open, "Create an account" on the page makes a new account and
    Firefox is signed in to it, verified, and syncs."""
    a = run.fresh("A")
    email = "new-" + run.opts.email
    sign_in_on_page(a, email, run.opts.password, "Signed in", button="#signup")
    state = a.js(SIGNED_IN, 60000, True)
    check(not state.get("timedOut") and state["user"]["email"] == email, "not signed in: %r" % state)
    a.sync()
    payload = json.loads(page_user(run, a).get("/storage/meta/global")["payload"])
    check(payload.get("storageVersion") == 5, "storageVersion: %r" % payload)


def page_errors(run):
    """The page shows the server's refusals and signs nothing in: an unknown account
    (errno 102), a sign-up while sign-ups are closed (125), a wrong password (103),
    and after ten failures the attempt limit (114)."""
    a = run.fresh("A")
    sign_in_on_page(a, "nobody@example.org", "whatever password", "no account with this email")
    sign_in_on_page(a, "new@example.org", "a new password", "Sign-ups are closed", button="#signup", navigate=False)
    # The limit counts failures per address too (the unknown account's included): ten
    # failures, then the next attempt is refused before any password check.
    statuses = []
    for attempt in range(12):
        _, status = sign_in_on_page(a, run.opts.email, "wrong %d" % attempt, "", navigate=False)
        statuses.append(status)
        if "Too many attempts" in status:
            break
        check("Incorrect password" in status, "attempt %d: %r" % (attempt, status))
    check("Too many attempts" in statuses[-1] and len(statuses) >= 9, "no attempt limit: %r" % statuses)
    state = a.js(SIGNED_IN, 0, False)
    check(state["user"] is None, "a refused sign-in signed A in: %r" % state)


# --- Sign-up policies on the page: invite codes, mailed verification codes --------------------

INVITE_REFUSED = "An invite code is needed to create an account here"


def account_emails(run):
    """The emails of `syncstore account list` on the server's data dir."""
    out = run.admin(["account", "list", "--data-dir", run.opts.accounts_dir]).stdout
    return {line.split("\t")[0] for line in out.splitlines() if "\t" in line}


def page_invite_sign_up(run):
    """Sign-ups by invite: `syncstore account invite` makes a code; on A's page the
    "Invite code" field is shown, and email, password and the code with "Create an
    account" make the account (the invite is then used by it); Firefox is signed in,
    verified, Sync on, and syncs. The same code again (another email, profile B) shows
    the page's invite refusal: B stays signed out and no account is made."""
    out = run.admin(["account", "invite", "--data-dir", run.opts.accounts_dir])
    code = out.stdout.splitlines()[0].strip()
    check(len(code) == 32, "not an invite code: %r" % out.stdout)
    a = run.fresh("A")
    email = "invited-" + run.opts.email
    sign_in_on_page(a, email, run.opts.password, "Signed in", button="#signup", invite=code)
    state = a.js(SIGNED_IN, 60000, True)
    step("A: %s" % state)
    check(not state.get("timedOut") and state["user"]["email"] == email and state["user"]["verified"],
          "A is not signed in to the invited account: %r" % state)
    a.sync()
    payload = json.loads(page_user(run, a).get("/storage/meta/global")["payload"])
    check(payload.get("storageVersion") == 5, "storageVersion: %r" % payload)
    invites = run.admin(["account", "invites", "--data-dir", run.opts.accounts_dir]).stdout
    check(any(line.endswith("\t" + email) for line in invites.splitlines()),
          "the invite is not marked used by %s: %r" % (email, invites))
    check(email in account_emails(run), "no account %s" % email)

    b = run.fresh("B")
    other = "second-" + run.opts.email
    sign_in_on_page(b, other, run.opts.password, INVITE_REFUSED, button="#signup", invite=code)
    state = b.js(SIGNED_IN, 0, False)
    check(state["user"] is None, "a spent invite code signed B in: %r" % state)
    check(other not in account_emails(run), "a spent invite code made the account %s" % other)
    a.sync()  # A is unaffected


CODE_PROMPT = "We sent a 6-digit code to your email"
WRONG_CODE = "Incorrect or expired verification code"


def wait_for_mails(run, n, secs=60):
    """The sink's mails once there are at least `n` (fails after `secs`)."""
    deadline = time.monotonic() + secs
    while True:
        mails = read_mails(run.opts.mail_dir)
        if len(mails) >= n or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    check(len(mails) >= n, "%d mails in the SMTP sink, not %d" % (len(mails), n))
    return mails


def enter_code_on_page(ff, code, expect):
    """Types `code` into the page's "Verification code" field (which must be shown) and
    clicks "Verify"; waits for the page's status to change to one containing `expect`."""
    m = ff.m
    m.context("content")
    try:
        field = m.find("#code")
        check(m.displayed(field), "the page shows no verification code field")
        before = m.text(m.find("#status"))
        m.clear(field)
        m.send_keys(field, code)
        m.click(m.find("#verify"))
        status = page_outcome(m, before, WORKING)
        step("%s: after code %s the page says %r" % (ff.name, code, status))
        check(expect in status, "the page says %r, not %r" % (status, expect))
    finally:
        m.context("chrome")


def page_email_code_sign_up(run):
    """Open sign-ups with SMTP (a sink from smtpsink.py): "Create an account" on A's
    page makes an unverified account, the server mails a 6-digit code and the page asks
    for it (Firefox still signed out); a wrong code shows the page's error and signs
    nothing in; the mailed code goes on: Firefox is signed in, verified, Sync on, and
    syncs. Exactly one mail, to the new address."""
    check(read_mails(run.opts.mail_dir) == [], "mail in the sink before the sign-up")
    a = run.fresh("A")
    email = "mailed-" + run.opts.email
    sign_in_on_page(a, email, run.opts.password, CODE_PROMPT, button="#signup")
    mail = wait_for_mails(run, 1)[0]
    body = mail.get_content()
    step("the mail: To %s, Subject %s\n%s" % (mail["To"], mail["Subject"], body))
    check(mail["To"].addresses[0].addr_spec == email, "the mail went to %s, not %s" % (mail["To"], email))
    check("verification code" in mail["Subject"], "subject: %r" % mail["Subject"])
    codes = re.findall(r"\b\d{6}\b", body)
    check(len(codes) == 1, "not one 6-digit code in the mail: %r" % body)
    code = codes[0]
    check(email in account_emails(run), "no account %s after the sign-up" % email)
    check(a.js(SIGNED_IN, 0, False)["user"] is None, "Firefox is signed in before the code was entered")

    enter_code_on_page(a, "%06d" % ((int(code) + 1) % 1000000), WRONG_CODE)
    check(a.js(SIGNED_IN, 0, False)["user"] is None, "a wrong code signed A in")
    enter_code_on_page(a, code, "Signed in")
    state = a.js(SIGNED_IN, 60000, True)
    step("A: %s" % state)
    check(not state.get("timedOut") and state["user"]["email"] == email and state["user"]["verified"],
          "A is not signed in to the verified account: %r" % state)
    a.sync()
    payload = json.loads(page_user(run, a).get("/storage/meta/global")["payload"])
    check(payload.get("storageVersion") == 5, "storageVersion: %r" % payload)
    check(len(read_mails(run.opts.mail_dir)) == 1, "more than one mail: %r" % read_mails(run.opts.mail_dir))


# --- Signing out, operator deletion -----------------------------------------------------------

SESSION_TOKEN = """
const data = await fxAccounts._internal.currentAccountState.getUserAccountData(["sessionToken"]);
return data && data.sessionToken;
"""

DISCONNECT = """
// What "Sign out" in the preferences does (no confirmation dialog in a test).
const win = Services.wm.getMostRecentWindow("navigator:browser");
await win.gSync.disconnect({ confirm: false });
const deadline = Date.now() + 30000;
while (await fxAccounts.getSignedInUser()) {
  if (Date.now() > deadline) return { stillSignedIn: await fxAccounts.getSignedInUser() };
  await sleep(100);
}
return { user: await fxAccounts.getSignedInUser(), setup: Weave.Status.checkSetup() };
"""


def session_request(origin, method, path, session_token, body=None):
    """`method` /v1`path` with a session token as Firefox holds it (hex), sent as a
    Bearer token of its HKDF-derived id (`fxs_<id>`), and `body` as JSON if given:
    (status, JSON, or the text when the answer is not JSON)."""
    okm = HKDF(algorithm=hashes.SHA256(), length=3 * 32, salt=None,
               info=b"identity.mozilla.com/picl/v1/sessionToken").derive(bytes.fromhex(session_token))
    r = requests.request(method, origin + "/v1" + path, headers={"Authorization": "Bearer fxs_" + okm[:32].hex()},
                         json=body, timeout=30)
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, r.text


def session_status(origin, session_token):
    """GET /v1/session/status with a session token as Firefox holds it: (status, JSON)."""
    return session_request(origin, "GET", "/session/status", session_token)


def sign_out(run):
    """Firefox signs out as the preferences' "Sign out" does: it reports no signed-in
    user and Sync not configured, and the server revoked the session Firefox held
    (session/status: 401 errno 110 with that token, 200 before)."""
    a = run.firefox("A", "leaver")
    a.sync()
    token = a.js(SESSION_TOKEN)
    check(token and len(token) == 64, "Firefox holds no session token: %r" % token)
    status, body = session_status(run.opts.tokenserver, token)
    check(status == 200 and body.get("uid"), "session/status before sign-out: %d %r" % (status, body))
    state = a.js(DISCONNECT)
    step("A after sign-out: %s" % state)
    check("stillSignedIn" not in state and state["user"] is None, "Firefox is still signed in: %r" % state)
    check(state["setup"] != "success.status_ok", "Sync is still set up after sign-out: %r" % state)
    deadline = time.monotonic() + 30
    while True:
        status, body = session_status(run.opts.tokenserver, token)
        if status != 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    check(status == 401 and isinstance(body, dict) and body.get("errno") == 110,
          "session/status after sign-out: %d %r" % (status, body))


def user_files(run, uid):
    """The user's storage files on the (single) server."""
    return glob.glob(os.path.join(run.opts.accounts_dir, "users", "*", "%d.sqlite*" % uid))


def account_deleted(run):
    """`syncstore account delete EMAIL` while the server runs: the page refuses the
    email as an unknown account, and the account's Sync data is gone from its node
    (its storage file deleted, its last storage token gets 401/404, no records)."""
    a = run.firefox("A", "doomed")
    a.js(ADD_BOOKMARKS, "doomed", 3)
    a.sync()
    s = run.server("doomed")
    check(len(s.records("bookmarks")) > 3, "A's bookmarks are not on the server")
    check(user_files(run, s.uid), "no storage file for uid %d" % s.uid)
    email, password = run.account("doomed")
    run.admin(["account", "delete", email, "--data-dir", run.opts.accounts_dir])
    b = run.fresh("B")
    sign_in_on_page(b, email, password, "no account with this email")
    check(b.js(SIGNED_IN, 0, False)["user"] is None, "B signed in to a deleted account")
    deadline = time.monotonic() + 30
    while user_files(run, s.uid) and time.monotonic() < deadline:
        time.sleep(0.2)
    check(not user_files(run, s.uid), "uid %d's storage file is still there 30 s after the deletion: %r"
          % (s.uid, user_files(run, s.uid)))
    req = requests.Request("GET", s.endpoint + "/storage/bookmarks").prepare()
    hawkauthlib.sign_request(req, s.id, s.key)
    r = requests.Session().send(req, timeout=30)
    step("GET bookmarks with the deleted user's last token: %d %s" % (r.status_code, r.text[:200]))
    check(r.status_code in (401, 404) or (r.status_code == 200 and r.json() == []),
          "the deleted user's bookmarks are still served: %d %s" % (r.status_code, r.text[:300]))


# --- Password change on syncstore's settings page ---------------------------------------------

MANAGE_URI = """
const { FxAccountsConfig } = ChromeUtils.importESModule("resource://gre/modules/FxAccountsConfig.sys.mjs");
return await FxAccountsConfig.promiseManageURI("test");
"""


def change_password_on_page(ff, current, new, expect):
    """Opens Firefox's own "Manage account" URL (syncstore's /settings), types the current
    and the new password and submits; waits for the page's status to contain `expect`."""
    url = ff.js(MANAGE_URI)
    step("%s: manage-account URL %s" % (ff.name, url))
    check(url.startswith(ff.autoconfig + "/settings?") and "email=" in url and "uid=" in url,
          "not a settings URL on syncstore: %s" % url)
    m = ff.m
    m.context("content")
    try:
        m.navigate(url)
        for sel, text in (("#current", current), ("#new", new)):
            el = m.find(sel)
            m.clear(el)
            m.send_keys(el, text)
        m.click(m.find("button[type=submit]"))
        status = page_outcome(m, CHANGING)
        step("%s: the settings page says %r" % (ff.name, status))
        check(expect in status, "the settings page says %r, not %r" % (status, expect))
    finally:
        m.context("chrome")
    return url



def password_change(run):
    """Profile A changes the password on syncstore's settings page ("Manage account"):
    a wrong current password is refused; then the change goes through, Firefox gets the
    new session over its WebChannel (the old one is revoked) and A keeps syncing without
    signing in again; B signs in with the NEW password (the old one is refused) and gets
    A's bookmarks from before and after the change (kB, so Sync's key, was kept)."""
    a = run.firefox("A", "changer")
    a.js(ADD_BOOKMARKS, "before", 2)
    a.sync()
    email, old = run.account("changer")
    new = "a brand new password"
    old_token = a.js(SESSION_TOKEN)
    _, kid_before, key_before = a.js(SYNC_TOKEN)
    change_password_on_page(a, "not the password", new, "Incorrect current password")
    change_password_on_page(a, old, new, "Password changed")
    run.accounts["changer"] = (email, new)
    new_token = a.js(SESSION_TOKEN)
    check(new_token and new_token != old_token, "Firefox kept its old session token")
    status, body = session_status(run.opts.tokenserver, new_token)
    check(status == 200, "Firefox's new session: %d %r" % (status, body))
    status, body = session_status(run.opts.tokenserver, old_token)
    check(status == 401 and body.get("errno") == 110, "the old session after the change: %d %r" % (status, body))
    state = a.js(SIGNED_IN, 0, False)
    check(state["user"] and state["user"]["email"] == email and state["setup"] == "success.status_ok",
          "A after the change: %r" % state)
    a.js(ADD_BOOKMARKS, "after", 1)
    a.sync()
    _, kid_after, key_after = a.js(SYNC_TOKEN)
    check((kid_after, key_after) == (kid_before, key_before), "Sync's key changed: %s -> %s" % (kid_before, kid_after))
    b = run.fresh("B")
    sign_in_on_page(b, email, old, "Incorrect password")
    check(b.js(SIGNED_IN, 0, False)["user"] is None, "the old password signed B in")
    sign_in_on_page(b, email, new, "Signed in", navigate=False)
    check(not b.js(SIGNED_IN, 60000, True).get("timedOut"), "B did not finish signing in")
    b.sync()
    for prefix, n in (("before", 2), ("after", 1)):
        got = b.js(BOOKMARKS, "http://example.com/%s/" % prefix)
        check(len(got) == n, "B has %d of A's %s bookmarks: %r" % (len(got), prefix, got))


def deleted_on_settings_page(run):
    """The account's owner deletes it on syncstore's settings page: a wrong password is
    refused; with the right one the page deletes the account, Firefox is told
    (`fxaccounts:delete`) and signs out, the account can no longer sign in, and its Sync
    data is gone from the node."""
    a = run.firefox("A", "owner")
    a.js(ADD_BOOKMARKS, "owned", 2)
    a.sync()
    s = run.server("owner")
    check(user_files(run, s.uid), "no storage file for uid %d" % s.uid)
    email, password = run.account("owner")
    url = a.js(MANAGE_URI)
    m = a.m
    m.context("content")
    try:
        m.navigate(url)
        for attempt, expect in (("not the password", "Incorrect"), (password, "The account is deleted")):
            el = m.find("#delete-password")
            m.clear(el)
            m.send_keys(el, attempt)
            m.click(m.find("#delete-submit"))
            status = page_outcome(m, DELETING)
            step("A: the settings page says %r" % status)
            check(expect in status, "the settings page says %r, not %r" % (status, expect))
            m.run("document.getElementById('status').textContent = '';")
    finally:
        m.context("chrome")
    state = a.js(SIGNED_IN, 0, False)
    deadline = time.monotonic() + 30
    while state["user"] is not None and time.monotonic() < deadline:
        time.sleep(0.5)
        state = a.js(SIGNED_IN, 0, False)
    check(state["user"] is None, "Firefox is still signed in after the deletion: %r" % state)
    deadline = time.monotonic() + 30
    while user_files(run, s.uid) and time.monotonic() < deadline:
        time.sleep(0.2)
    check(not user_files(run, s.uid), "uid %d's storage file is still there 30 s after the deletion" % s.uid)
    b = run.fresh("B")
    sign_in_on_page(b, email, password, "no account with this email")


# --- Send Tab: a device command from one profile to the other -------------------------------

OPEN_URI = "https://identity.mozilla.com/cmd/open-uri"
FETCH_INTERVAL = "identity.fxaccounts.commands.missed.fetch_interval"
LAST_FETCH = "identity.fxaccounts.commands.missed.last_fetch"

# The device list fetched again (as Firefox's "Send Tab to Device" menu does). On a
# profile without a push subscription (push is off in these profiles) the refresh also
# re-registers the device and fetches its missed commands: Firefox's own recovery path.
DEVICE_LIST = """
await fxAccounts.device.refreshDeviceList({ ignoreCached: true });
return (fxAccounts.device.recentDeviceList || []).map(d => ({
  id: d.id, name: d.name, isCurrentDevice: d.isCurrentDevice,
  commands: Object.keys(d.availableCommands || {}), pushCallback: d.pushCallback || null }));
"""

# Firefox's own Send Tab API, as "Send Tab to Device" calls it: the tab is encrypted to
# the target's open-uri keys (wrapped in Sync's key) and sent with invoke_command.
SEND_TAB = """
const [targetId, url, title] = args;
const device = (fxAccounts.device.recentDeviceList || []).find(d => d.id == targetId);
if (!device) throw new Error("no device " + targetId + " in the device list");
const mark = Weave.Service.__test.lines.length;
const report = await fxAccounts.commands.sendTab.send([device], { url, title });
return { succeeded: report.succeeded.map(d => d.id),
         failed: report.failed.map(f => ({ id: f.device.id,
           error: f.error instanceof Error ? String(f.error) : JSON.stringify(f.error) })),
         lines: Weave.Service.__test.lines.slice(mark) };
"""

# A scheduled sync as Sync's scheduler runs one: its own `scheduleNextSync` (the
# prototype's; the harness's override on the instance only logs) arms the scheduler's
# timer for 1 s, which then calls `syncIfMPUnlocked(null, "schedule")`: the sync, and,
# when `identity.fxaccounts.commands.missed.fetch_interval` seconds have passed since
# `identity.fxaccounts.commands.missed.last_fetch`, Firefox's fetch of missed device
# commands (`pollDeviceCommands`, which logs "Polling device commands." first). Waits
# for the sync's end; the fetch runs beside it.
SCHEDULED_SYNC = """
const [timeoutMs] = args;
const svc = Weave.Service;
const deadline = Date.now() + timeoutMs;
while (svc.locked) {
  if (Date.now() > deadline) throw new Error("a sync held the lock too long");
  await sleep(100);
}
const before = Services.prefs.getIntPref("%s", 0);
const mark = svc.__test.lines.length;
let started = false, done = null;
const topics = ["weave:service:sync:start", "weave:service:sync:finish", "weave:service:sync:error"];
const observer = { observe(subject, topic) {
  if (topic.endsWith(":start")) started = true;
  else if (started) done = topic;
} };
for (const t of topics) Services.obs.addObserver(observer, t);
try {
  Object.getPrototypeOf(svc.scheduler).scheduleNextSync.call(svc.scheduler, 1000, { why: "schedule" });
  while (!done && Date.now() < deadline) await sleep(100);
} finally {
  for (const t of topics) Services.obs.removeObserver(observer, t);
}
if (!done) throw new Error("the scheduled sync did not end in time");
return { topic: done, service: Weave.Status.service, sync: Weave.Status.sync, before,
         interval: Services.prefs.getIntPref("%s"), lines: svc.__test.lines.slice(mark) };
""" % (LAST_FETCH, FETCH_INTERVAL)

LAST_FETCHED = """
return Services.prefs.getIntPref("%s", 0);
""" % LAST_FETCH

SET_FETCH_INTERVAL = """
Services.prefs.setIntPref("%s", args[0]);
""" % FETCH_INTERVAL

# Every tab of every browser window: URL, label (the page's title once loaded), and
# whether Firefox marked it for attention (as it marks a received tab).
WINDOW_TABS = """
const tabs = [];
for (const win of Services.wm.getEnumerator("navigator:browser")) {
  for (const tab of win.gBrowser.tabs) {
    tabs.push({ url: tab.linkedBrowser.currentURI.spec, label: tab.label, selected: tab.selected,
                attention: tab.hasAttribute("attention") });
  }
}
return tabs;
"""

SELECT_TAB = """
const win = Services.wm.getMostRecentWindow("navigator:browser");
const tab = win.gBrowser.tabs.find(t => t.linkedBrowser.currentURI.spec == args[0]);
win.gBrowser.selectedTab = tab;
for (let i = 0; i < 100 && !tab.selected; i++) await sleep(50);
await sleep(500);
"""

# The largest command payload the server takes (its JSON; MAX_COMMAND_PAYLOAD in
# src/accounts/commands.rs, as Firefox caps its own).
MAX_COMMAND_PAYLOAD = 16 * 1024

PYFXA_SESSION = """
import json, sys
from fxa.core import Client
origin, email, password = sys.argv[1:]
print(json.dumps(Client(origin + "/v1").login(email, password).token))
"""


def scheduled_sync(ff, fetch):
    """Runs what Sync's scheduler runs when a scheduled sync is due (SCHEDULED_SYNC) on
    `ff`; checks that the sync succeeded and that Firefox fetched missed device commands
    if and only if `fetch`. The log lines it wrote are checked with the next `sync()`."""
    r = ff.js(SCHEDULED_SYNC, 120000, timeout=150)
    polled = [line for line in r["lines"] if "Polling device commands." in line]
    check(any("Next sync in 1000 ms. (why=schedule)" in line for line in r["lines"]),
          "%s: the scheduler did not arm its timer:\n%s" % (ff.name, "\n".join(r["lines"])))
    step("%s: scheduled sync: %s, %s; fetch interval %d s, last fetch %d; %s" % (
        ff.name, r["topic"], r["sync"], r["interval"], r["before"],
        "fetched missed commands" if polled else "no fetch of missed commands"))
    check(r["topic"] == "weave:service:sync:finish" and r["service"] == "success.status_ok"
          and r["sync"] == "success.sync", "%s: the scheduled sync failed: %r" % (ff.name, r))
    check(bool(polled) == fetch, "%s: the scheduled sync %s missed commands (fetch expected: %s):\n%s" % (
        ff.name, "fetched" if polled else "did not fetch", fetch, "\n".join(r["lines"])))
    return r


def wait_for_fetch(ff, after, secs=30):
    """`identity.fxaccounts.commands.missed.last_fetch` once it is past `after` (set when
    Firefox's scheduled fetch of missed commands has finished); fails after `secs`."""
    deadline = time.monotonic() + secs
    while True:
        last = ff.js(LAST_FETCHED)
        if last > after or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    check(last > after, "%s's scheduled fetch of missed commands did not finish in %d s" % (ff.name, secs))
    return last


def device_of(devices, name):
    found = [d for d in devices if d["name"] == name]
    check(len(found) == 1, "not one device %s in %r" % (name, devices))
    return found[0]


def wait_for_tab(ff, url, secs=60):
    """`ff`'s tab showing `url` once its page has loaded (its label is the page's title,
    the path); fails after `secs`."""
    path = url.split("/", 3)[3]
    deadline = time.monotonic() + secs
    while True:
        tabs = ff.js(WINDOW_TABS)
        found = [t for t in tabs if t["url"] == url]
        if (found and found[0]["label"] == "/" + path) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    check(found and found[0]["label"] == "/" + path,
          "%s has no loaded tab with %s %d s after the fetch: %r" % (ff.name, url, secs, tabs))
    return found[0], tabs


def screenshot(ff, path):
    """A PNG of `ff`'s browser window (chrome context), saved to `path`."""
    png = ff.m.command("WebDriver:TakeScreenshot", {"full": False, "hash": False})["value"]
    with open(path, "wb") as f:
        f.write(base64.b64decode(png))
    step("%s: screenshot %s" % (ff.name, path))


def invoke(run, token, target, payload, command=OPEN_URI):
    """POST /v1/account/devices/invoke_command with a session token (hex)."""
    return session_request(run.opts.tokenserver, "POST", "/account/devices/invoke_command", token,
                           {"target": target, "command": command, "payload": payload})


def check_refused(what, status_body, statuses, errnos, summary):
    status, body = status_body
    step("%s: %d %s" % (what, status, body))
    summary[what] = [status, body]
    check(status in statuses and isinstance(body, dict) and body.get("errno") in errnos,
          "%s: %d %r, not %s with errno in %s" % (what, status, body, statuses, errnos))


def send_tab(run):
    """Send Tab between two profiles of one account, through Firefox's own code on both
    sides. Both see each other in Firefox's device list and B's entry offers open-uri; A
    sends a tab to B with Firefox's Send Tab API (the tab end-to-end encrypted to B's
    keys, `invoke_command` on the server), reported sent. B has no push (no push service
    here), so it gets the tab from its fetch of missed commands in a scheduled sync: with
    the daily interval already used (a first scheduled sync fetched nothing) it does not
    fetch and no tab opens; with `identity.fxaccounts.commands.missed.fetch_interval`
    lowered to 1 s the next scheduled sync fetches it, and B opens the URL in a tab
    (which loads the page from 127.0.0.1). Refused on the server: a device of another
    account as the target (both ways), a command the target does not offer, an
    oversized payload; B's queue holds only A's tab, its URL unreadable. In the out dir:
    a screenshot of B's window with the received tab selected (send-tab-B.png) and the
    server's answers (send-tab.json)."""
    a, b = two_profiles(run, "tabs")
    url, title = run.pages.url("sent-tab"), "A tab sent from A"
    la, lb = a.js(DEVICE_LIST), b.js(DEVICE_LIST)
    step("A's device list: %s\nB's device list: %s" % (la, lb))
    dev_a, dev_b = device_of(la, "profile-A"), device_of(la, "profile-B")
    check(dev_a["isCurrentDevice"] and not dev_b["isCurrentDevice"], "A's device list: %r" % la)
    check(device_of(lb, "profile-A")["id"] == dev_a["id"] and device_of(lb, "profile-B")["id"] == dev_b["id"]
          and device_of(lb, "profile-B")["isCurrentDevice"], "B's device list differs from A's: %r %r" % (lb, la))
    check(OPEN_URI in dev_b["commands"], "B's device offers no %s: %r" % (OPEN_URI, dev_b))
    check(OPEN_URI in dev_a["commands"], "A's device offers no %s: %r" % (OPEN_URI, dev_a))

    step("B: a scheduled sync at Firefox's default fetch interval (never fetched yet: it fetches)")
    check(b.js(LAST_FETCHED) == 0, "B fetched missed commands before its first scheduled sync")
    first = scheduled_sync(b, fetch=True)
    check(first["interval"] == 86400, "the default fetch interval is %r, not a day" % first["interval"])
    fetched = wait_for_fetch(b, 0)

    step("A: send %s to B with Firefox's Send Tab API" % url)
    report = a.js(SEND_TAB, dev_b["id"], url, title)
    sent = [line for line in report["lines"] if "sent" in line.lower() or "invoke" in line.lower()]
    step("A's report: succeeded %s, failed %s\n%s" % (report["succeeded"], report["failed"], "\n".join(sent)))
    check(report["succeeded"] == [dev_b["id"]] and report["failed"] == [], "A's Send Tab failed: %r" % report)
    # B has no push registration: queued, not notified (FxA's answer, which Firefox logs
    # as an ERROR "Sending was only partially successful" and counts as sent).
    answer = [line for line in report["lines"] if "Successfully sent" in line or "partially successful" in line]
    check(len(answer) == 1 and '"enqueued":true' in answer[0], "A's log shows no queued command: %r" % report)
    check("/page/sent-tab" not in run.pages.paths, "the page was fetched before B got the tab")

    step("B: another scheduled sync, the daily interval not passed: no fetch, no tab")
    scheduled_sync(b, fetch=False)
    check(b.js(LAST_FETCHED) == fetched, "B's last fetch moved without a fetch")
    check(not any(t["url"] == url for t in b.js(WINDOW_TABS)), "B opened the tab without fetching")

    step("B: fetch interval 1 s, then a scheduled sync: Firefox fetches the tab and opens it")
    b.js(SET_FETCH_INTERVAL, 1)
    time.sleep(2)  # past last_fetch + 1 s
    scheduled_sync(b, fetch=True)
    tab, tabs = wait_for_tab(b, url)
    step("B's tabs: %s" % tabs)
    wait_for_fetch(b, fetched)
    check(tab["attention"], "B did not mark the received tab for attention: %r" % tab)
    check("/page/sent-tab" in run.pages.paths, "the page server never served the sent page: %r" % run.pages.paths)
    received = [line for line in b.log_lines() if "Tab received with FxA commands" in line]
    step("B's log: %s" % received)
    check(len(received) == 1 and title in received[0] and "profile-A" in received[0],
          "B's log does not show the tab received from profile-A: %r" % received)
    # The received tab opened in the background; selected, as a click on Firefox's
    # "Tab received" notification does, for the screenshot (a headless window paints
    # only the selected tab in its tab strip).
    b.js(SELECT_TAB, url)
    screenshot(b, os.path.join(run.opts.out, "send-tab-B.png"))
    summary = {"B's tabs": tabs, "A's answer from invoke_command": answer[0], "B's log": received}
    b.sync()  # clean, with everything B logged since its last sync (the fetch included)

    step("refusals on the server")
    origin = run.opts.tokenserver
    token_a, token_b = a.js(SESSION_TOKEN), b.js(SESSION_TOKEN)
    email, password = run.account("stranger")
    out = subprocess.run([sys.executable, "-c", PYFXA_SESSION, origin, email, password],
                         capture_output=True, text=True, timeout=120, cwd="/")
    check(out.returncode == 0, "PyFxA: %s%s" % (out.stdout, out.stderr))
    token_s = json.loads(out.stdout)
    status, stranger = session_request(origin, "POST", "/account/device", token_s,
                                       {"name": "stranger's device", "type": "desktop",
                                        "availableCommands": {OPEN_URI: "{}"}})
    check(status == 200 and stranger.get("id"), "registering the stranger's device: %d %r" % (status, stranger))
    # FxA's errnos: 123 unknown device, 157 unavailable device command, 107 invalid
    # parameter.
    check_refused("A -> another account's device", invoke(run, token_a, stranger["id"], {"encrypted": "AAAA"}),
                  (400,), (123,), summary)
    check_refused("another account -> B's device", invoke(run, token_s, dev_b["id"], {"encrypted": "AAAA"}),
                  (400,), (123,), summary)
    check_refused("A -> B, a command B does not offer",
                  invoke(run, token_a, dev_b["id"], {"encrypted": "AAAA"}, command=OPEN_URI + "/v9"),
                  (400,), (157,), summary)
    # {"encrypted":"AAA…"}: 16 bytes more than the limit.
    check_refused("A -> B, an oversized payload",
                  invoke(run, token_a, dev_b["id"], {"encrypted": "A" * MAX_COMMAND_PAYLOAD}), (400, 413), (107,),
                  summary)
    status, queue = session_request(origin, "GET", "/account/device/commands?index=0", token_b)
    step("B's queue: %d %s" % (status, queue))
    check(status == 200 and isinstance(queue, dict), "B's device/commands: %d %r" % (status, queue))
    messages = queue.get("messages", [])
    check(len(messages) == 1 and messages[0]["data"]["command"] == OPEN_URI
          and messages[0]["data"]["sender"] == dev_a["id"]
          and list(messages[0]["data"]["payload"]) == ["encrypted"],
          "B's queue is not A's one tab: %r" % queue)
    check(url not in json.dumps(queue), "the tab's URL is readable on the server: %r" % queue)
    summary["B's queue"] = queue
    with open(os.path.join(run.opts.out, "send-tab.json"), "w") as f:
        json.dump(summary, f, indent=1)


# --- A server restored from a backup ---------------------------------------------------------

META_SYNC_ID = "return Weave.Service.syncID;"


def bookmark_ids(ff, prefix):
    """Record ids (Places GUIDs) of `ff`'s bookmarks under http://example.com/PREFIX/."""
    return {b["guid"] for b in ff.js(BOOKMARKS, "http://example.com/%s/" % prefix)}


def meta_global(s):
    return json.loads(s.get("/storage/meta/global")["payload"])


def restore_resync(run):
    """The server restored from a backup (`syncstore backup` while it runs; stopped, its
    data dir deleted, `syncstore restore`, started again on the same address) goes back
    in time: the bookmarks synced after the backup are gone from it. With
    `--no-resync` Firefox does not notice: its next syncs upload nothing of them, and they
    stay missing on the server. By default restore marks each user (a new syncID in
    meta/global): Firefox's next sync merges (nothing deleted on any profile) and uploads
    what the server lacks; the other profile keeps everything, and a new profile gets
    every bookmark. Then one user alone is restored into the running server (`restore
    --user`, marked too) and the same holds. The scenario starts the server itself
    (`Served`) in --accounts-dir."""
    data = run.opts.accounts_dir
    # An internal listener for `restore --user`, which sends the user's copy to it.
    served = run.served = Served(run.opts.bin, data, run.opts.secret, run.opts.out,
                                 env={"SYNCSTORE_INTERNAL_LISTEN": "127.0.0.1:0"})
    run.opts.tokenserver = served.url
    served.start()

    def restore(dest, *flags):
        step("the server is stopped, its data dir deleted, restored from %s %s and started" % (dest, flags))
        served.stop()
        shutil.rmtree(data)
        out = run.admin(["restore", dest, "--data-dir", data, *flags])
        served.start()
        return out.stdout

    def make(ff, prefix, n):
        ff.js(ADD_BOOKMARKS, prefix, n)
        ff.sync()
        return bookmark_ids(ff, prefix)

    # Without the marking: Firefox does not notice, the server stays without them.
    plain = os.path.join(run.opts.backups, "plain")
    step("without the marking: L syncs 5 bookmarks, the server is backed up, L syncs 5 more")
    lost = run.firefox("L", "lost")
    lost.sync()
    kept_l = make(lost, "before", 5)
    run.admin(["backup", plain, "--data-dir", data])
    later_l = make(lost, "after", 5)
    s = run.server("lost")
    check(kept_l | later_l <= set(s.records("bookmarks")), "L's bookmarks are not all on the server")
    sync_id = meta_global(s)["syncID"]
    out = restore(plain, "--no-resync")
    check("not marked for re-sync" in out, "restore --no-resync says: %s" % out)
    s = run.server("lost")
    on_server = set(s.records("bookmarks"))
    check(kept_l <= on_server and not later_l & on_server,
          "the restored server should hold the 5 earlier bookmarks and none of the later: %r" % on_server)
    check(meta_global(s)["syncID"] == sync_id, "--no-resync changed meta/global")
    for _ in range(2):
        lost.sync()
    on_server = set(s.records("bookmarks"))
    step("after two syncs of L, the server holds %d of L's 5 later bookmarks" % len(later_l & on_server))
    check(not later_l & on_server, "L uploaded bookmarks again without the marking: %r" % (later_l & on_server))
    check(len(bookmark_ids(lost, "after")) == 5, "L lost its own later bookmarks")
    lost.close()
    run.profiles.remove(lost)

    # With the marking (restore's default).
    marked = os.path.join(run.opts.backups, "marked")
    step("with the marking: A and B sync, A makes 5 bookmarks, backup, A makes 5 more, B gets them")
    a, b = two_profiles(run, "kept")
    kept = make(a, "before", 5)
    b.sync()
    run.admin(["backup", marked, "--data-dir", data])
    later = make(a, "after", 5)
    b.sync()
    check(bookmark_ids(b, "after") == later, "B did not get A's later bookmarks before the restore")
    s = run.server("kept")
    meta = meta_global(s)
    out = restore(marked)
    counts = re.search(r"marked (\d+) of (\d+) users for re-sync", out)
    check(counts and counts.group(1) == counts.group(2) != "0", "restore says: %s" % out)
    s = run.server("kept")
    on_server = set(s.records("bookmarks"))
    check(kept <= on_server and not later & on_server,
          "the restored server should hold the 5 earlier bookmarks and none of the later: %r" % on_server)
    marked_meta = meta_global(s)
    step("meta/global before the restore: %s\nafter: %s" % (meta, marked_meta))
    check(marked_meta["syncID"] != meta["syncID"], "meta/global's syncID was not replaced")
    check({k: v for k, v in marked_meta.items() if k != "syncID"} == {k: v for k, v in meta.items() if k != "syncID"},
          "the marking changed more than the syncID")

    step("A syncs: it notices the new syncID, merges and uploads what the server lacks")
    first = a.sync()
    noticed = [x for x in first["lines"] if "Sync IDs differ" in x]
    step("A's log: %s" % noticed)
    check(noticed, "A's log does not show the new syncID noticed")
    check(a.js(META_SYNC_ID) == marked_meta["syncID"], "A did not take the new syncID")
    on_server = set(s.records("bookmarks"))
    check(kept | later <= on_server, "after A's sync the server lacks %r" % ((kept | later) - on_server))
    check(meta_global(s)["syncID"] == marked_meta["syncID"], "A replaced meta/global (a server wipe?)")
    b.sync()
    a.sync()
    for ff in (a, b):
        check(bookmark_ids(ff, "before") == kept and bookmark_ids(ff, "after") == later,
              "%s's bookmarks after the restore differ" % ff.name)
    step("a new profile C signs in after the restore: it gets every bookmark")
    c = run.firefox("C", "kept")
    c.sync()
    check(bookmark_ids(c, "before") == kept and bookmark_ids(c, "after") == later,
          "C lacks %r" % ((kept | later) - bookmark_ids(c, "before") - bookmark_ids(c, "after")))
    titles = sorted(x["title"] for x in c.js(BOOKMARKS, "http://example.com/"))
    check(titles == sorted(["before %d" % i for i in range(5)] + ["after %d" % i for i in range(5)]),
          "C's bookmarks: %r" % titles)
    summary = {"meta/global before the restore": meta, "after": marked_meta, "A's log": noticed,
               "server bookmarks": sorted(s.records("bookmarks"))}

    # One user restored into the running server (`restore --user`): marked too.
    one = os.path.join(run.opts.backups, "one")
    step("restore --user: backup, A makes 5 more bookmarks, the user alone is restored while the server runs")
    run.admin(["backup", one, "--data-dir", data])
    late = make(a, "late", 5)
    b.sync()
    s = run.server("kept")
    check(late <= set(s.records("bookmarks")), "A's late bookmarks are not on the server")
    before_user = meta_global(s)
    out = run.admin(["restore", one, "--user", str(s.uid), "--discard-newer", "--data-dir", data]).stdout
    check("marked for re-sync" in out, "restore --user says: %s" % out)
    on_server = set(s.records("bookmarks"))
    check(kept | later <= on_server and not late & on_server,
          "after restore --user the server should hold the 10 earlier bookmarks and none of the late: %r" % on_server)
    check(meta_global(s)["syncID"] != before_user["syncID"], "restore --user did not replace the syncID")
    first = a.sync()
    check(any("Sync IDs differ" in x for x in first["lines"]), "A did not notice restore --user's syncID")
    check(kept | later | late <= set(s.records("bookmarks")), "after A's sync the server lacks some late bookmarks")
    for ff in (b, c):
        ff.sync()
        check(bookmark_ids(ff, "late") == late and bookmark_ids(ff, "before") == kept
              and bookmark_ids(ff, "after") == later, "%s's bookmarks after restore --user differ" % ff.name)
    summary["restore --user"] = out
    with open(os.path.join(run.opts.out, "restore-resync.json"), "w") as f:
        json.dump(summary, f, indent=1)



SCENARIOS = {
    f.__name__: f
    for f in (first_sync, data_reaches_b, edits_reach_a, devices, many_bookmarks, second_account, node_drains,
              page_sign_in, page_two_profiles, page_sign_up, page_errors, page_invite_sign_up,
              page_email_code_sign_up, sign_out, account_deleted, password_change,
              deleted_on_settings_page, send_tab, restore_resync)
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--out", required=True)
    p.add_argument("--tokenserver", required=True)
    p.add_argument("--accounts-dir", required=True)
    p.add_argument("--bin")
    p.add_argument("--db")
    p.add_argument("--secret")
    p.add_argument("--nodes", default="")
    p.add_argument("--token-secs", type=int, default=0)
    p.add_argument("--email", default="")
    p.add_argument("--password", default="")
    p.add_argument("--mail-dir", default="")
    p.add_argument("--backups", default="")
    opts = p.parse_args()
    run = Run(opts)
    failed = False
    try:
        SCENARIOS[opts.scenario](run)
    except Exception:  # noqa: BLE001 - report anything, with the logs
        failed = True
        print("FAILED:\n" + traceback.format_exc(), flush=True)
    finally:
        try:
            run.close()
        except Exception:  # noqa: BLE001
            print("closing: " + traceback.format_exc(), flush=True)
    if failed:
        for ff in run.profiles:
            print("---- tail of %s's sync log (%s) ----" % (ff.name, ff.dir), flush=True)
            print(tail(os.path.join(ff.dir, "sync-log-all.txt"), 60))
        sys.exit(1)
    print("ok")


def tail(path, n):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError as e:
        return str(e)


if __name__ == "__main__":
    main()
