"""Real Firefox profiles against syncstore: start, sync, inspect.

A `Firefox` is one headless Firefox with its own profile, driven over Marionette in the
chrome context; its only account setting is `identity.fxaccounts.autoconfig.uri`
pointing at syncstore (it signs in on syncstore's own page, see scenarios.py). Every
request it makes outside 127.0.0.1 goes to a refusing proxy. `sync()` runs one sync and
fails unless Firefox reports success AND the sync log shows no failed request and no
ERROR line — the whole log from sign-in on, not only the sync's own lines (Firefox
syncs by itself right after sign-in and finishes some work, such as notifying the
account's other devices, after a sync has ended) — AND Firefox wrote no
`weave/logs/error-sync-*.txt` file in the profile. `SyncUser` reads the server over HTTP (a token from the tokenserver with
the OAuth access token Firefox holds, requests signed with Mozilla's hawkauthlib).
"""

import json
import os
import shutil
import socket
import subprocess
import time

import hawkauthlib
import requests

from marionette import Marionette

PRELUDE = """
const { Weave } = ChromeUtils.importESModule("resource://services-sync/main.sys.mjs");
const { PlacesUtils } = ChromeUtils.importESModule("resource://gre/modules/PlacesUtils.sys.mjs");
const { getFxAccountsSingleton } = ChromeUtils.importESModule("resource://gre/modules/FxAccounts.sys.mjs");
const { setTimeout } = ChromeUtils.importESModule("resource://gre/modules/Timer.sys.mjs");
const fxAccounts = getFxAccountsSingleton();
const sleep = ms => new Promise(r => setTimeout(r, ms));
"""

INSTALL_LOG = """
const { Log } = ChromeUtils.importESModule("resource://gre/modules/Log.sys.mjs");
if (!Weave.Service.__test) {
  const lines = [];
  class Capture extends Log.Appender {
    doAppend(formatted) { lines.push(formatted); }
  }
  const appender = new Capture(new Log.BasicFormatter());
  appender.level = Log.Level.Debug;
  for (const name of ["Sync", "FirefoxAccounts", "Services.Common"]) {
    Log.repository.getLogger(name).addAppender(appender);
  }
  Weave.Service.__test = { lines };
  // The test decides when each profile syncs (two profiles syncing at once would race
  // each other's uploads): the scheduler's automatic syncs only log.
  const scheduler = Weave.Service.scheduler;
  scheduler.clearSyncTriggers();
  scheduler.scheduleNextSync = function (interval, options) {
    this._log.debug(`test: automatic sync in ${interval} ms (${JSON.stringify(options)}) left to the test`);
  };
}
"""

SYNC = """
const [engines, timeoutMs] = args;
const svc = Weave.Service;
const deadline = Date.now() + timeoutMs;
const topics = ["weave:service:sync:start", "weave:service:sync:finish", "weave:service:sync:error",
                "weave:service:login:error", "weave:service:reset-file-log"];
for (let attempt = 0; ; attempt++) {
  while (svc.locked) {
    if (Date.now() > deadline) throw new Error("a sync held the lock too long");
    await sleep(100);
  }
  const mark = svc.__test.lines.length;
  let started = false, done = null, fileLogWritten = false;
  const observer = { observe(subject, topic) {
    if (topic == "weave:service:reset-file-log") fileLogWritten = fileLogWritten || done != null;
    else if (topic.endsWith(":start")) started = true;
    else if (started || topic == "weave:service:login:error") done = topic;
  } };
  for (const t of topics) Services.obs.addObserver(observer, t);
  try {
    await Promise.race([
      svc.sync({ engines: engines || undefined, why: "test" }),
      sleep(Math.max(deadline - Date.now(), 0)).then(() => { throw new Error("sync timed out"); }),
    ]);
    // Firefox writes the sync's log file (error-sync-* when anything logged an error)
    // after the sync ends: wait for it (at most 10 s), so that the file is this sync's.
    const written = Date.now() + 10000;
    while (done && !fileLogWritten && Date.now() < written) await sleep(50);
  } finally {
    for (const t of topics) Services.obs.removeObserver(observer, t);
  }
  if (done && (started || done == "weave:service:login:error")) {
    return { topic: done, attempt, status: { service: Weave.Status.service, sync: Weave.Status.sync,
             login: Weave.Status.login, engines: Object.assign({}, Weave.Status.engines) },
             lines: svc.__test.lines.slice(mark), total: svc.__test.lines.length };
  }
  if (Date.now() > deadline) throw new Error("no sync of ours ran");
  await sleep(200);
}
"""


def free_port():
    """A free TCP port on 127.0.0.1."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Refuser:
    """A bound, never-listening port: every connection to it is refused."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]


def firefox_binary():
    """The Firefox to run: $SYNCSTORE_FIREFOX, else firefox-esr or firefox on PATH."""
    for name in (os.environ.get("SYNCSTORE_FIREFOX"), "firefox-esr", "firefox"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise SystemExit("Firefox is not installed (apt-get install firefox-esr, or set SYNCSTORE_FIREFOX)")


AUTOCONFIGURED = (
    "identity.fxaccounts.auth.uri",
    "identity.fxaccounts.remote.oauth.uri",
    "identity.fxaccounts.remote.profile.uri",
    "identity.fxaccounts.remote.root",
    "identity.fxaccounts.remote.pairing.uri",
    "identity.sync.tokenserver.uri",
)


def prefs(marionette_port, autoconfig, refuse_port):
    """The profile's user.js: no account or tokenserver URL, only
    `identity.fxaccounts.autoconfig.uri` (a server's origin) from which Firefox finds
    them all, as a user's profile would; everything outside 127.0.0.1 refused."""
    dead = "http://127.0.0.1:%d" % refuse_port
    return {
        "marionette.port": marionette_port,
        "identity.fxaccounts.enabled": True,
        "identity.fxaccounts.allowHttp": True,
        "identity.fxaccounts.autoconfig.uri": autoconfig,
        "identity.fxaccounts.loglevel": "Debug",
        "identity.fxaccounts.telemetry.clientAssociationPing.enabled": False,
        "services.sync.log.appender.file.logOnSuccess": True,
        "services.sync.log.appender.file.logOnError": True,
        "services.sync.log.appender.file.level": "Trace",
        "services.sync.log.logger": "Debug",
        "services.sync.log.logger.engine": "Debug",
        "services.sync.engine.addons": False,
        "services.sync.engine.prefs": False,
        "services.sync.engine.addresses": False,
        "services.sync.engine.creditcards": False,
        "services.sync.engine.extension-storage": False,
        "services.sync.engine.forms": False,
        "services.sync.syncInterval": 86400,
        "services.sync.scheduler.activeInterval": 86400,
        "services.sync.scheduler.idleInterval": 86400,
        "services.sync.scheduler.immediateInterval": 86400,
        "services.sync.telemetry.submissionInterval": 86400,
        "services.sync.syncedTabs.syncDelayAfterTabChange": 0,
        # Every other request: to a proxy that refuses (localhost is never proxied).
        "network.proxy.type": 1,
        "network.proxy.http": "127.0.0.1",
        "network.proxy.http_port": refuse_port,
        "network.proxy.ssl": "127.0.0.1",
        "network.proxy.ssl_port": refuse_port,
        "network.proxy.socks": "127.0.0.1",
        "network.proxy.socks_port": refuse_port,
        "network.proxy.share_proxy_settings": True,
        "network.proxy.allow_hijacking_localhost": False,
        "network.dns.disablePrefetch": True,
        "network.prefetch-next": False,
        "network.predictor.enabled": False,
        "network.captive-portal-service.enabled": False,
        "network.connectivity-service.enabled": False,
        "dom.push.connection.enabled": False,
        "dom.push.serverURL": "ws://127.0.0.1:%d" % refuse_port,
        "toolkit.telemetry.enabled": False,
        "toolkit.telemetry.unified": False,
        "toolkit.telemetry.server": dead,
        "datareporting.healthreport.uploadEnabled": False,
        "datareporting.policy.dataSubmissionEnabled": False,
        "app.update.disabledForTesting": True,
        "app.update.auto": False,
        "app.normandy.enabled": False,
        "app.shield.optoutstudies.enabled": False,
        "browser.safebrowsing.malware.enabled": False,
        "browser.safebrowsing.phishing.enabled": False,
        "browser.safebrowsing.downloads.enabled": False,
        "browser.safebrowsing.provider.mozilla.updateURL": "",
        "services.settings.server": dead + "/v1",
        "extensions.update.enabled": False,
        "extensions.getAddons.cache.enabled": False,
        "extensions.systemAddon.update.enabled": False,
        "browser.shell.checkDefaultBrowser": False,
        "browser.startup.homepage_override.mstone": "ignore",
        "browser.startup.page": 0,
        "browser.newtabpage.enabled": False,
        "browser.newtabpage.activity-stream.feeds.system.topstories": False,
        "browser.newtabpage.activity-stream.feeds.section.topstories": False,
        "browser.aboutwelcome.enabled": False,
        "browser.search.update": False,
        "browser.tabs.remote.autostart": True,
        "signon.management.page.breach-alerts.enabled": False,
    }


# Firefox flushes its queued tab commands at the start of a sync and logs an ERROR when
# its device list is still empty; right after sign-in the list may not have been
# fetched yet (a race on a loaded machine), so wait until it shows this device.
OWN_DEVICE_LISTED = """
for (let i = 0; i < 200; i++) {
  if ((fxAccounts.device.recentDeviceList || []).some(d => d.isCurrentDevice)) return;
  if (i % 10 == 0) await fxAccounts.device.refreshDeviceList({ ignoreCached: true });
  await sleep(100);
}
throw new Error("Firefox's device list never showed its own device");
"""


class SyncFailed(AssertionError):
    """A sync that Firefox or its log says failed."""


# ERROR lines that are Firefox's own races, whatever the server answers:
# - At sign-in Firefox fetches its device list while it registers its device, and
#   caches the (then empty) list for a minute; 3 s after its first tabs sync (a headless
#   Firefox is always idle) it checks its send-tab queue and logs this ERROR when that
#   cached list is empty, even with nothing queued. The harness still requires the own
#   device listed before the first sync of ours (OWN_DEVICE_LISTED) and the `devices`
#   scenario checks the lists.
FIREFOX_RACES = ("No devices available for queued tab commands",)


def is_firefox_race(message):
    return any(message.startswith(known) for known in FIREFOX_RACES)


def log_problems(lines, allow, may_fail):
    """The lines of a Sync / FxA log that show a failure: a failed request not in
    `allow` ((status, URL part) pairs), or an ERROR / FATAL line unless `may_fail`;
    and the statuses of all failed requests."""
    problems = []
    failed = []
    for line in lines:
        fields = line.split("\t")
        level = fields[2] if len(fields) > 3 else ""
        message = fields[3] if len(fields) > 3 else line
        words = message.split(" ")
        if len(words) >= 4 and words[0] in ("GET", "PUT", "POST", "DELETE") and words[1] == "fail":
            status, url = int(words[2]), words[3]
            failed.append(status)
            if not any(status == s and part in url for s, part in allow):
                problems.append(line)
        elif level in ("ERROR", "FATAL") and not may_fail and not is_firefox_race(message):
            problems.append(line)
    return problems, failed


class Firefox:
    """One headless Firefox profile, driven over Marionette."""

    def __init__(self, name, out_dir, autoconfig, refuser):
        self.name = name
        self.autoconfig = autoconfig
        self.dir = os.path.join(out_dir, name)
        self.profile = os.path.join(self.dir, "profile")
        os.makedirs(self.profile, exist_ok=True)
        self.port = free_port()
        with open(os.path.join(self.profile, "user.js"), "w") as f:
            for key, value in prefs(self.port, autoconfig, refuser.port).items():
                f.write("user_pref(%s, %s);\n" % (json.dumps(key), json.dumps(value)))
        self.output = open(os.path.join(self.dir, "firefox-output.txt"), "ab")
        env = dict(os.environ, MOZ_HEADLESS="1", MOZ_CRASHREPORTER_DISABLE="1")
        self.proc = subprocess.Popen(
            [firefox_binary(), "--headless", "--marionette", "-remote-allow-system-access",
             "--no-remote", "--profile", self.profile],
            stdout=self.output, stderr=subprocess.STDOUT, env=env,
        )
        self.m = Marionette(self.port, timeout=90, alive=lambda: self.proc.poll() is None)
        self.js(INSTALL_LOG)
        self.syncs = 0
        # How many captured log lines earlier syncs have checked: each sync checks
        # every line since (the log is captured from before sign-in).
        self.checked = 0
        # error-sync-* files Firefox wrote during syncs allowed to fail.
        self.expected_error_logs = set()

    def error_logs(self):
        """The error-sync-* log files in the profile (Firefox writes one for every sync,
        or stretch between syncs, in which anything logged an error), except those
        whose only errors are known Firefox races (FIREFOX_RACES)."""
        logs = os.path.join(self.profile, "weave", "logs")
        try:
            names = {n for n in os.listdir(logs) if n.startswith("error-sync-")}
        except FileNotFoundError:
            return set()
        return {n for n in names if n in self.expected_error_logs or not self.only_races(os.path.join(logs, n))}

    @staticmethod
    def only_races(path):
        """Whether every ERROR / FATAL line of a log file is a known Firefox race."""
        with open(path, errors="replace") as f:
            for line in f:
                fields = line.rstrip("\n").split("\t")
                if len(fields) > 3 and fields[2] in ("ERROR", "FATAL") and not is_firefox_race(fields[3]):
                    return False
        return True

    def js(self, script, *args, timeout=120):
        """Runs a chrome-context async script (with Weave, PlacesUtils, fxAccounts …)."""
        return self.m.run(PRELUDE + script, args, timeout=timeout)

    def log_lines(self):
        """Every Sync / FxA log line captured so far."""
        return self.js("return Weave.Service.__test.lines;")

    def sync(self, engines=None, allow=(), timeout=180):
        """One sync; fails unless it succeeded and its log is clean.

        `allow`: failed requests this step expects, as (status, URL part) pairs, e.g.
        (401, "") when the node changed: Firefox learns so from a 401 and ends that sync
        in error, which is then allowed too; (404, "/storage/meta/global") on an empty
        new node.
        """
        if self.syncs == 0:
            self.js(OWN_DEVICE_LISTED)
        self.syncs += 1
        result = self.js(SYNC, engines, int(timeout * 1000), timeout=timeout + 30)
        lines = result["lines"]
        # Everything logged since the last check: from sign-in on for the first sync
        # (Firefox's own first sync, the sign-in), then what was logged between syncs.
        checked = self.js("const [from, to] = args; return Weave.Service.__test.lines.slice(from, to);",
                          self.checked, result["total"])
        self.checked = result["total"]
        earlier = checked[: len(checked) - len(lines)]
        with open(os.path.join(self.dir, "sync-log.txt"), "a") as f:
            if earlier:
                f.write("==== %s before sync #%d ====\n" % (self.name, self.syncs))
                f.write("\n".join(earlier) + "\n")
            f.write("==== %s sync #%d (%s) ====\n" % (self.name, self.syncs, engines or "all"))
            f.write("\n".join(lines) + "\n")
        may_fail = any(status == 401 for status, _ in allow)
        # Before the first sync of ours: the sign-in and Firefox's own first sync, which
        # on a new account finds no meta/global yet.
        before_allow = list(allow) + ([(404, "/storage/meta/global")] if self.syncs == 1 else [])
        problems, _ = log_problems(earlier, before_allow, may_fail)
        more, failed = log_problems(lines, allow, may_fail)
        problems += more
        new_error_logs = self.error_logs() - self.expected_error_logs
        if may_fail:
            self.expected_error_logs |= new_error_logs
        elif new_error_logs:
            problems.append("Firefox wrote %s in %s" % (", ".join(sorted(new_error_logs)),
                                                          os.path.join(self.profile, "weave", "logs")))
        ok = (
            result["topic"] == "weave:service:sync:finish"
            and result["status"]["service"] == "success.status_ok"
            and result["status"]["sync"] == "success.sync"
            and all(s == "success.sync" for s in result["status"]["engines"].values())
        )
        if problems or (not ok and not may_fail):
            raise SyncFailed(
                "%s: sync #%d failed: %s %s\n%s"
                % (self.name, self.syncs, result["topic"], json.dumps(result["status"]), "\n".join(problems or lines[-40:]))
            )
        return {"ok": ok, "failed": failed, "status": result["status"], "lines": lines}

    def close(self):
        """Quits Firefox (killing it if it does not quit)."""
        try:
            with open(os.path.join(self.dir, "sync-log-all.txt"), "w") as f:
                f.write("\n".join(self.log_lines()) + "\n")
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass
        self.m.quit()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.output.close()


class SyncUser:
    """Server-side view of an account's storage, as a Sync client sees it."""

    def __init__(self, tokenserver, token):
        """`token`: an OAuth access token (for Sync's scope) and the key id."""
        jwt, kid = token
        r = requests.get(
            tokenserver + "/1.0/sync/1.5",
            headers={"Authorization": "Bearer " + jwt, "X-KeyID": kid}, timeout=30,
        )
        if r.status_code != 200:
            raise AssertionError("tokenserver: %d %s" % (r.status_code, r.text))
        t = r.json()
        self.endpoint, self.id, self.key, self.uid = t["api_endpoint"], t["id"], t["key"], t["uid"]
        self.session = requests.Session()

    def get(self, path):
        """GET a storage path (e.g. `/info/collections`); the decoded JSON."""
        req = requests.Request("GET", self.endpoint + path).prepare()
        hawkauthlib.sign_request(req, self.id, self.key)
        r = self.session.send(req, timeout=30)
        if r.status_code != 200:
            raise AssertionError("GET %s: %d %s" % (path, r.status_code, r.text))
        return r.json()

    def records(self, collection):
        """id -> modified of every record of a collection."""
        return {b["id"]: b["modified"] for b in self.get("/storage/%s?full=1" % collection)}


class Served:
    """A `syncstore serve` that a scenario starts, stops and starts again itself, as an
    operator does, always on the same 127.0.0.1 port and data dir; each run's log goes
    to `log_dir/server-N.log`."""

    def __init__(self, binary, data_dir, secret, log_dir, env=None):
        self.binary, self.data_dir, self.secret, self.log_dir = binary, data_dir, secret, log_dir
        self.env = env or {}
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.proc = None
        self.runs = 0

    def log_path(self):
        return os.path.join(self.log_dir, "server-%d.log" % self.runs)

    def start(self, secs=30):
        """Starts the server; returns once it logs that it listens (fails after `secs`)."""
        self.runs += 1
        log = open(self.log_path(), "wb")
        env = dict(os.environ, SYNCSTORE_SECRETS=self.secret, RUST_LOG="info", **self.env)
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--listen", "127.0.0.1:%d" % self.port, "--data-dir", self.data_dir],
            stdout=subprocess.DEVNULL, stderr=log, env=env,
        )
        log.close()
        deadline = time.monotonic() + secs
        while time.monotonic() < deadline:
            with open(self.log_path(), errors="replace") as f:
                if "listening on %s" % self.url in f.read():
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise AssertionError("the server did not start on %s (see %s)" % (self.url, self.log_path()))

    def stop(self):
        """Stops the server (SIGTERM, then SIGKILL after 10 s)."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
