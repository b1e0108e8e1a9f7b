"""Send Tab and Web Push on syncstore's accounts service, seen by independent clients:
PyPI's PyFxA signs in devices, a push receiver on 127.0.0.1 captures what the server
POSTs to their push endpoints, checks its VAPID header (RFC 8292) and decrypts its body
with the device's own keys (RFC 8291 aes128gcm, PyPI's http_ece).

Usage: accounts_pyfxa_sendtab.py MODE BASE_URL EMAIL PASSWORD   (EMAIL made by
`account add`; the server started as MODE needs):
  push  the server allows push endpoints on 127.0.0.1: a command reaches its target's
        endpoint and is fetched from the pushed URL; device connected/disconnected, a
        devices/notify relay; a 410 marks the endpoint expired until it is registered
        again; a password change and the account's deletion reach the devices.
  ssrf  the server allows no private endpoint (and any push service): http and literal
        private addresses are refused at registration, a name resolving to loopback is
        never connected to.
  services  the server allows 127.0.0.1 and only its default push services: an
        endpoint on 127.0.0.1 is pushed to, one at another host name is not.
  off   the server runs with push turned off: nothing is POSTed, the command is still
        fetched.
Prints "ok" when every check passed.
"""
import base64
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import http_ece
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
import fxa.core
import fxa.errors

OPEN_URI = "https://identity.mozilla.com/cmd/open-uri"
# How long a push may take to arrive, and how long "nothing arrives" is watched.
ARRIVAL = 15.0
QUIET = 3.0

mode, base, email, password = sys.argv[1], sys.argv[2].rstrip("/"), sys.argv[3], sys.argv[4]
assert mode in ("push", "ssrf", "services", "off"), mode
client = fxa.core.Client(server_url=base + "/v1")


def b64u(raw):
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def unb64u(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def step(what):
    print("--", what, flush=True)


# ---- the push receiver ---------------------------------------------------------------

class Receiver:
    """An HTTP server on 127.0.0.1 (and on ::1 at the same port when it can) recording
    every connection and every request; it answers 201, or the status set for a path."""

    def __init__(self):
        self.cond = threading.Condition()
        self.requests = []  # dicts: path, method, headers, body
        self.connections = 0
        self.status = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def handle_one(self, method):
                length = min(int(self.headers.get("Content-Length") or 0), 1 << 20)
                body = self.rfile.read(length) if length else b""
                with receiver.cond:
                    receiver.requests.append({
                        "path": self.path, "method": method,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body, "at": time.time()})
                    status = receiver.status.get(self.path, 201)
                    receiver.cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self):
                self.handle_one("POST")

            def do_GET(self):
                self.handle_one("GET")

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def verify_request(self, request, client_address):
                with receiver.cond:
                    receiver.connections += 1
                    receiver.cond.notify_all()
                return True

        self.servers = [Server(("127.0.0.1", 0), Handler)]
        self.port = self.servers[0].server_address[1]
        if socket.has_ipv6:
            class Server6(Server):
                address_family = socket.AF_INET6
            try:
                self.servers.append(Server6(("::1", self.port), Handler))
            except OSError:
                pass
        for s in self.servers:
            threading.Thread(target=s.serve_forever, daemon=True).start()
        self.origin = "http://127.0.0.1:%d" % self.port

    def url(self, path):
        return self.origin + path

    def count(self, path):
        with self.cond:
            return sum(1 for r in self.requests if r["path"] == path)

    def wait(self, path, n, timeout=ARRIVAL):
        """The requests to `path` once there are at least `n`, within `timeout` s."""
        deadline = time.time() + timeout
        with self.cond:
            while True:
                got = [r for r in self.requests if r["path"] == path]
                if len(got) >= n:
                    return got
                left = deadline - time.time()
                assert left > 0, "%d requests to %s after %ss, wanted %d" % (
                    len(got), path, timeout, n)
                self.cond.wait(left)

    def quiet(self, what, seconds=QUIET):
        """Asserts that `what()` (a number under the lock) does not change for `seconds`."""
        with self.cond:
            before = what()
            deadline = time.time() + seconds
            while time.time() < deadline:
                self.cond.wait(deadline - time.time())
                assert what() == before, "the receiver was reached: %r" % self.requests[-3:]


# ---- devices, with their push keys ---------------------------------------------------

class Device:
    """A signed-in session of the account with a registered device and (when given a
    receiver path) its own P-256 key pair and auth secret."""

    def __init__(self, name, commands=None):
        self.name = name
        self.session = client.login(email, password)
        self.commands = commands or {}
        self.id = None
        self.path = None

    def api(self, method, path, body=None):
        return self.session.apiclient.request(method, path, body, auth=self.session._auth)

    def new_keys(self):
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.public = self.private.public_key().public_bytes(
            Encoding.X962, PublicFormat.UncompressedPoint)
        self.auth = os.urandom(16)

    def register(self, callback=None):
        body = {"name": self.name, "type": "desktop", "availableCommands": self.commands}
        if self.id:
            body["id"] = self.id
        if callback is not None:
            self.new_keys()
            body.update(pushCallback=callback, pushPublicKey=b64u(self.public),
                        pushAuthKey=b64u(self.auth))
        d = self.api("POST", "/account/device", body)
        self.id = d["id"]
        assert d["name"] == self.name, d
        if callback is not None:
            assert d["pushCallback"] == callback, d
            self.path = urlsplit(callback).path
        return d

    def listed(self):
        return {d["id"]: d for d in self.api("GET", "/account/devices")}

    def decrypt(self, request, receiver):
        """Checks a captured push request's headers and VAPID JWT; its plaintext JSON."""
        h = request["headers"]
        assert request["method"] == "POST", request
        assert h.get("content-encoding") == "aes128gcm", h
        ttl = int(h["ttl"])
        assert 0 <= ttl <= 28 * 24 * 3600, h
        check_vapid(h.get("authorization", ""), receiver.origin)
        plain = http_ece.decrypt(request["body"], private_key=self.private,
                                 auth_secret=self.auth, version="aes128gcm")
        return json.loads(plain)

    def messages(self, receiver, n):
        """The first `n` pushes to this device's endpoint, decrypted."""
        return [self.decrypt(r, receiver) for r in receiver.wait(self.path, n)[:n]]

    def until(self, receiver, seen, command, timeout=ARRIVAL):
        """The pushes to this device after the first `seen`, decrypted, once one of
        them is `command` (within `timeout` s)."""
        deadline = time.time() + timeout
        n = seen + 1
        while True:
            left = max(0.0, deadline - time.time())
            msgs = [self.decrypt(r, receiver) for r in receiver.wait(self.path, n, left)[seen:]]
            if by_command(msgs, command):
                return msgs
            n = seen + len(msgs) + 1


def check_vapid(authorization, origin):
    """RFC 8292: `vapid t=<ES256 JWT>, k=<P-256 key>`, the JWT signed by that key for
    the endpoint's origin, expiring within 24 hours, its contact (if any) https or
    mailto."""
    scheme, _, params = authorization.partition(" ")
    assert scheme.lower() == "vapid", authorization
    fields = dict(p.strip().split("=", 1) for p in params.split(","))
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64u(fields["k"]))
    assert jwt.get_unverified_header(fields["t"])["alg"] == "ES256"
    claims = jwt.decode(fields["t"], key=key, algorithms=["ES256"], audience=origin,
                        options={"require": ["aud", "exp"]})
    now = time.time()
    assert now < claims["exp"] <= now + 24 * 3600 + 60, claims
    # The contact is optional (the test server's URL is http: it names none).
    assert claims.get("sub", "https://").startswith(("https://", "mailto:")), claims
    # A token that another key signed is refused by the same check.
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    try:
        jwt.decode(fields["t"], key=other, algorithms=["ES256"], audience=origin)
        raise AssertionError("the VAPID JWT verified with an unrelated key")
    except jwt.InvalidSignatureError:
        pass


def errno_of(call, what):
    try:
        call()
    except fxa.errors.ClientError as e:
        return e.details.get("errno")
    raise AssertionError("expected the server to refuse %s" % what)


def invoke(sender, target, url, ttl=None):
    body = {"target": target.id, "command": OPEN_URI,
            "payload": {"encrypted": b64u(url.encode())}}
    if ttl is not None:
        body["ttl"] = ttl
    r = sender.api("POST", "/account/devices/invoke_command", body)
    assert r["enqueued"] is True and isinstance(r["notified"], bool), r
    return r


def fetch(target, url):
    """GET the URL a push named (or a path of the API), as the target's session."""
    r = target.api("GET", url)
    assert isinstance(r["messages"], list) and isinstance(r["last"], bool), r
    return r


def by_command(messages, command):
    return [m for m in messages if m.get("command") == command]


# ---- push: the server allows 127.0.0.1 ------------------------------------------------

def run_push():
    rx = Receiver()
    step("register A and B with push endpoints on the receiver")
    a = Device("pyfxa A", {OPEN_URI: "keys-of-a"})
    a.register(rx.url("/push/a"))
    b = Device("pyfxa B", {OPEN_URI: "keys-of-b"})
    b.register(rx.url("/push/b"))

    step("device_connected reached A when B registered")
    connected = a.messages(rx, 1)[0]
    assert connected == {"version": 1, "command": "fxaccounts:device_connected",
                         "data": {"deviceName": "pyfxa B"}}, connected

    rx.quiet(lambda: rx.count(b.path), 0.5)
    assert rx.count(b.path) == 0, "a device is not told of its own connection"

    step("A sends B a tab: one push, VAPID and aes128gcm, FxA's payload")
    before = rx.count(b.path)
    r = invoke(a, b, "https://example.org/sent-by-a")
    assert r == {"enqueued": True, "notified": True}, r
    pushed = b.messages(rx, before + 1)[before]
    rx.quiet(lambda: rx.count(b.path), 1.0)
    assert pushed["version"] == 1 and pushed["command"] == "fxaccounts:command_received", pushed
    data = pushed["data"]
    assert data["command"] == OPEN_URI and data["sender"] == a.id, pushed
    index = data["index"]
    assert isinstance(index, int), pushed
    assert data["url"] == "%s/v1/account/device/commands?index=%d&limit=1" % (base, index), pushed

    step("B fetches the pushed URL: A's payload, sent by A")
    got = fetch(b, data["url"])
    assert [m["index"] for m in got["messages"]] == [index], got
    assert got["messages"][0]["data"] == {
        "command": OPEN_URI, "sender": a.id,
        "payload": {"encrypted": b64u(b"https://example.org/sent-by-a")}}, got
    # A's own queue stays empty.
    assert fetch(a, "/account/device/commands?index=0")["messages"] == []

    step("device C comes and goes: connected, then disconnected {id: C} to A and B")
    a_seen, b_seen = rx.count(a.path), rx.count(b.path)
    c = Device("pyfxa C")
    c.register()
    a.messages(rx, a_seen + 1)
    b.messages(rx, b_seen + 1)
    a.api("POST", "/account/device/destroy", {"id": c.id})
    for d, seen in ((a, a_seen), (b, b_seen)):
        msgs = d.until(rx, seen, "fxaccounts:device_disconnected")
        assert by_command(msgs, "fxaccounts:device_connected") == [
            {"version": 1, "command": "fxaccounts:device_connected",
             "data": {"deviceName": "pyfxa C"}}], msgs
        assert by_command(msgs, "fxaccounts:device_disconnected") == [
            {"version": 1, "command": "fxaccounts:device_disconnected",
             "data": {"id": c.id}}], msgs

    step("devices/notify from A to all but A reaches B only")
    a_seen, b_seen = rx.count(a.path), rx.count(b.path)
    note = {"version": 1, "command": "sync:collection_changed",
            "data": {"collections": ["clients"]}}
    r = a.api("POST", "/account/devices/notify",
              {"to": "all", "excluded": [a.id], "payload": note})
    assert r == {}, r
    assert b.messages(rx, b_seen + 1)[b_seen] == note
    rx.quiet(lambda: sum(1 for q in rx.requests if q["path"] in (a.path, b.path)), 1.5)
    assert rx.count(a.path) == a_seen and rx.count(b.path) == b_seen + 1

    step("B's endpoint answers 410: marked expired, commands say expiredCallback")
    rx.status[b.path] = 410
    b_seen = rx.count(b.path)
    r = invoke(a, b, "https://example.org/second")
    assert r == {"enqueued": True, "notified": True}, r
    rx.wait(b.path, b_seen + 1)
    deadline = time.time() + ARRIVAL
    while not a.listed()[b.id]["pushEndpointExpired"]:
        assert time.time() < deadline, ("B's pushEndpointExpired never turned true", a.listed())
        time.sleep(0.2)
    assert a.listed()[a.id]["pushEndpointExpired"] is False
    r = invoke(a, b, "https://example.org/third")
    assert r == {"enqueued": True, "notified": False, "notifyError": "expiredCallback"}, r
    rx.quiet(lambda: rx.count(b.path), 1.5)
    assert rx.count(b.path) == b_seen + 1, "a 410 is not retried, an expired endpoint not tried"
    # Both commands still wait in B's queue.
    urls = [unb64u(m["data"]["payload"]["encrypted"]).decode()
            for m in fetch(b, "/account/device/commands?index=%d" % (index + 1))["messages"]]
    assert urls == ["https://example.org/second", "https://example.org/third"], urls

    step("B registers a new endpoint: no longer expired, pushes reach it")
    b.register(rx.url("/push/b2"))
    assert b.listed()[b.id]["pushEndpointExpired"] is False
    r = invoke(a, b, "https://example.org/fourth")
    assert r == {"enqueued": True, "notified": True}, r
    pushed = b.messages(rx, 1)[0]
    assert pushed["command"] == "fxaccounts:command_received", pushed
    got = fetch(b, pushed["data"]["url"])
    assert got["messages"][0]["data"]["payload"]["encrypted"] == b64u(b"https://example.org/fourth")

    step("a password change: B hears password_changed; the devices go")
    b_seen = rx.count(b.path)
    a.session.change_password(password, password + " 2")
    msgs = b.until(rx, b_seen, "fxaccounts:password_changed")
    assert by_command(msgs, "fxaccounts:password_changed") == [
        {"version": 1, "command": "fxaccounts:password_changed"}], msgs
    # Every session but the replacement is revoked, and the devices with them: a
    # Firefox registers again with its new session.
    assert a.api("GET", "/account/devices") == []

    step("the account's deletion: account_destroyed {uid} to its devices")
    a.id = None
    a.register(rx.url("/push/a2"))
    client.destroy_account(email, password + " 2")
    msgs = a.until(rx, 0, "fxaccounts:account_destroyed")
    assert by_command(msgs, "fxaccounts:account_destroyed") == [
        {"version": 1, "command": "fxaccounts:account_destroyed",
         "data": {"uid": a.session.uid}}], msgs


# ---- ssrf: the server allows no private endpoint --------------------------------------

def run_ssrf():
    rx = Receiver()
    a = Device("pyfxa A", {OPEN_URI: "keys-of-a"})
    a.register()
    b = Device("pyfxa B", {OPEN_URI: "keys-of-b"})
    b.register()
    p = rx.port
    step("http endpoints, and https on private literals, are refused at registration")
    for url in ["http://127.0.0.1:%d/push/b" % p, "http://localhost:%d/push/b" % p,
                "http://2130706433:%d/push/b" % p, "http://[::1]:%d/push/b" % p,
                "http://[::ffff:127.0.0.1]:%d/push/b" % p,
                "https://127.0.0.1:%d/push/b" % p, "https://[::1]:%d/push/b" % p,
                "https://0x7f.1:%d/push/b" % p]:
        assert errno_of(lambda: b.register(url), url) == 107, url
    assert b.listed()[b.id]["pushCallback"] is None
    step("an https name resolving to loopback registers, and is never connected to")
    for url in ["https://localhost:%d/push/b" % p, "https://localhost.:%d/push/b" % p]:
        b.register(url)
        r = invoke(a, b, "https://example.org/ssrf")
        assert r["enqueued"] is True, r
    rx.quiet(lambda: rx.connections, QUIET)
    assert rx.connections == 0, rx.requests
    got = fetch(b, "/account/device/commands?index=0")
    assert len(got["messages"]) == 2, got


# ---- services: only the listed push services are pushed to ------------------------------

def run_services():
    rx = Receiver()
    a = Device("pyfxa A", {OPEN_URI: "keys-of-a"})
    a.register(rx.url("/push/a"))
    b = Device("pyfxa B", {OPEN_URI: "keys-of-b"})
    step("an endpoint outside the push services registers, and gets no push")
    b.register("https://localhost:%d/push/b" % rx.port)
    r = invoke(b, a, "https://example.org/to-a")
    assert r == {"enqueued": True, "notified": True}, r
    # The control: the allowed address is pushed to (B's connection, then the tab).
    msgs = a.until(rx, 0, "fxaccounts:command_received")
    assert by_command(msgs, "fxaccounts:device_connected"), msgs
    rx.quiet(lambda: rx.connections, 0.5)
    seen = rx.connections
    r = invoke(a, b, "https://example.org/to-b")
    assert r["notified"] is False and r["notifyError"], r
    rx.quiet(lambda: rx.connections, QUIET)
    assert rx.connections == seen, rx.requests
    got = fetch(b, "/account/device/commands?index=0")
    assert [m["data"]["sender"] for m in got["messages"]] == [a.id], got


# ---- off: push turned off --------------------------------------------------------------

def run_off():
    rx = Receiver()
    a = Device("pyfxa A", {OPEN_URI: "keys-of-a"})
    a.register(rx.url("/push/a"))
    b = Device("pyfxa B", {OPEN_URI: "keys-of-b"})
    b.register(rx.url("/push/b"))
    step("push off: the command is queued, not notified, and fetched")
    r = invoke(a, b, "https://example.org/no-push")
    assert r["enqueued"] is True and r["notified"] is False and r["notifyError"], r
    r = a.api("POST", "/account/devices/notify",
              {"to": "all", "payload": {"version": 1, "command": "sync:collection_changed",
                                        "data": {"collections": ["clients"]}}})
    assert r == {}, r
    rx.quiet(lambda: rx.connections, QUIET)
    assert rx.connections == 0, rx.requests
    got = fetch(b, "/account/device/commands?index=0")
    assert [m["data"]["sender"] for m in got["messages"]] == [a.id], got
    assert got["messages"][0]["data"]["payload"]["encrypted"] == b64u(b"https://example.org/no-push")


{"push": run_push, "ssrf": run_ssrf, "services": run_services, "off": run_off}[mode]()
print("ok")
