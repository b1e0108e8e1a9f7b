"""A stand-in for Firefox Accounts on 127.0.0.1, for the Firefox tests.

Firefox is signed in without UI (the harness hands it an account with a session token
and the oldsync scoped key); this server answers what Firefox then asks the accounts
service: OAuth access tokens for the oldsync scope (RS256 JWTs that syncstore's
tokenserver verifies with the test JWK set), device registration and the device list,
the profile, account and session status. Requests are Hawk-signed with keys derived
from the session token; the Hawk id tells which account asks. Every request is logged;
an unknown one gets a 404 and is listed in `unknown`.
"""

import base64
import hashlib
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

OLDSYNC = "https://identity.mozilla.com/apps/oldsync"
KEYS_CHANGED_AT = 1700000000  # seconds, as FxA's kid uses


def b64url(data):
    """Base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hawk_id(session_token_hex):
    """The Hawk id Firefox derives from a session token (HKDF, FxA's `sessionToken` info)."""
    okm = HKDF(
        algorithm=hashes.SHA256(), length=3 * 32, salt=None,
        info=b"identity.mozilla.com/picl/v1/sessionToken",
    ).derive(bytes.fromhex(session_token_hex))
    return okm[:32].hex()


class Account:
    """One test account: its uid, keys, session tokens and registered devices."""

    def __init__(self, name):
        self.name = name
        self.uid = hashlib.sha256(b"uid:" + name.encode()).hexdigest()[:32]
        self.email = "%s@example.com" % name
        kb = hashlib.sha256(b"kB:" + name.encode()).digest()
        self.sync_key = hashlib.sha512(b"sync:" + name.encode()).digest()
        self.kid = "%d-%s" % (KEYS_CHANGED_AT, b64url(hashlib.sha256(kb).digest()[:16]))
        self.devices = {}
        self.sessions = {}

    def scoped_key(self):
        """The oldsync scoped key as Firefox stores it (a JWK)."""
        return {"kid": self.kid, "k": b64url(self.sync_key), "kty": "oct", "scope": OLDSYNC}

    def new_session(self):
        """A fresh session token (hex); its Hawk id maps back to this account."""
        token = uuid.uuid4().hex + uuid.uuid4().hex
        self.sessions[hawk_id(token)] = token
        return token

    def signed_in_user(self):
        """What `fxAccounts._internal.setSignedInUser` takes."""
        return {
            "uid": self.uid, "email": self.email, "sessionToken": self.new_session(),
            "verified": True, "scopedKeys": {OLDSYNC: self.scoped_key()},
        }


class FxaStandIn:
    """The HTTP server; `url` is its root (`/v1` auth API, `/profile/v1`, `/page/N`)."""

    def __init__(self, key_pem, issuer, log_path):
        self.key_pem = key_pem
        self.issuer = issuer
        self.accounts = {}
        self.unknown = []
        self.lock = threading.Lock()
        self.log = open(log_path, "a", buffering=1)
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):
                pass

            def _answer(self, method):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, answer = standin.handle(method, self.path, self.headers, body)
                data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
                ctype = "text/html" if isinstance(answer, str) else "application/json"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._answer("GET")

            def do_POST(self):
                self._answer("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def account(self, name):
        """The account called `name` (created on first use)."""
        with self.lock:
            if name not in self.accounts:
                self.accounts[name] = Account(name)
            return self.accounts[name]

    def access_token(self, account, scope=OLDSYNC, ttl=3600):
        """An RS256 JWT as FxA issues: sub, scope, iat, exp, iss, fxa-generation."""
        now = int(time.time())
        claims = {
            "sub": account.uid, "scope": scope, "iat": now, "exp": now + ttl,
            "client_id": "5882386c6d801776", "fxa-generation": KEYS_CHANGED_AT * 1000,
        }
        if self.issuer:
            claims["iss"] = self.issuer
        return jwt.encode(claims, self.key_pem, algorithm="RS256", headers={"kid": "test-key-1"})

    def _caller(self, headers):
        auth = headers.get("Authorization") or ""
        m = re.search(r'id="([0-9a-f]+)"', auth)
        if m:
            with self.lock:
                for account in self.accounts.values():
                    if m.group(1) in account.sessions:
                        return account, m.group(1)
        m = re.match(r"Bearer (\S+)", auth)
        if m:
            sub = jwt.decode(m.group(1), options={"verify_signature": False}).get("sub")
            with self.lock:
                for account in self.accounts.values():
                    if account.uid == sub:
                        return account, None
        return None, None

    def handle(self, method, path, headers, body):
        """Answers one request: (status, JSON-able value or HTML text)."""
        status, answer = self._route(method, path, headers, body)
        self.log.write("%s %s %s -> %d\n" % (time.strftime("%H:%M:%S"), method, path, status))
        return status, answer

    def _route(self, method, path, headers, body):
        req = json.loads(body) if body else {}
        route = path.split("?")[0]
        m = re.match(r"^/page/(\w+)$", route)
        if m:
            return 200, "<html><head><title>Page %s</title></head><body>%s</body></html>" % (m.group(1), m.group(1))
        if route == "/favicon.ico":  # the test pages' tab asks; they have none
            return 404, {"code": 404}
        account, session = self._caller(headers)
        if route == "/v1/account/status" and method == "GET":
            uid = path.split("uid=")[-1]
            return 200, {"exists": any(a.uid == uid for a in self.accounts.values())}
        if account is None:
            return self._unknown(method, path, 401)
        if route == "/v1/oauth/token" and method == "POST":
            ttl = int(req.get("ttl") or 3600)
            scope = req.get("scope", OLDSYNC)
            return 200, {
                "access_token": self.access_token(account, scope, ttl), "token_type": "bearer",
                "scope": scope, "expires_in": ttl, "auth_at": int(time.time()),
            }
        if route == "/v1/oauth/destroy" and method == "POST":
            return 200, {}
        if route == "/v1/session/status" and method == "GET":
            return 200, {"state": "verified", "uid": account.uid}
        if route == "/v1/session/destroy" and method == "POST":
            with self.lock:
                account.sessions.pop(session, None)
            return 200, {}
        if route == "/v1/recovery_email/status" and method == "GET":
            return 200, {"email": account.email, "verified": True, "sessionVerified": True, "emailVerified": True}
        if route == "/v1/account/device" and method == "POST":
            with self.lock:
                device_id = req.get("id") or uuid.uuid4().hex
                device = account.devices.setdefault(device_id, {"id": device_id})
                device.update(req)
                device.update({"id": device_id, "session": session, "lastAccessTime": int(time.time() * 1000)})
                device.setdefault("pushCallback", None)
                device.setdefault("pushEndpointExpired", False)
                answer = {k: v for k, v in device.items() if k != "session"}
            return 200, answer
        if route in ("/v1/account/devices", "/v1/account/attached_clients") and method == "GET":
            with self.lock:
                devices = [
                    dict({k: v for k, v in d.items() if k != "session"}, isCurrentDevice=d["session"] == session)
                    for d in account.devices.values()
                ]
            if route == "/v1/account/attached_clients":
                return 200, [dict(d, deviceId=d["id"], sessionTokenId=None) for d in devices]
            return 200, devices
        if route == "/v1/account/devices/notify" and method == "POST":
            return 200, {}
        if route == "/v1/account/device/commands" and method == "GET":
            return 200, {"index": 0, "last": True, "messages": []}
        if route == "/v1/account/device/destroy" and method == "POST":
            with self.lock:
                account.devices.pop(req.get("id"), None)
            return 200, {}
        if route in ("/profile/v1/profile", "/v1/account/profile") and method == "GET":
            return 200, {
                "uid": account.uid, "email": account.email, "displayName": account.name,
                "avatar": None, "avatarDefault": True,
            }
        return self._unknown(method, path, 404)

    def _unknown(self, method, path, status):
        with self.lock:
            self.unknown.append("%s %s" % (method, path))
        return status, {"code": status, "errno": 999, "error": "unknown to the stand-in", "message": path}

    def close(self):
        """Stops serving."""
        self.server.shutdown()
        self.log.close()
