"""PyPI's PyFxA (the independent Firefox Accounts client) against syncstore's accounts
service: sign up, sign in, fetch keys, OAuth tokens, the tokenserver and a Sync
storage request with what it hands out, session status, destroy.

Usage: accounts_pyfxa.py BASE_URL EMAIL PASSWORD   (EMAIL made by `account add`)
"""
import base64
import hashlib
import sys

import requests
import hawkauthlib
import fxa.core
import fxa.errors
import fxa.oauth
from fxa._utils import FxATokenBearerAuth

OLDSYNC = "https://identity.mozilla.com/apps/oldsync"
FIREFOX = "5882386c6d801776"

base, email, password = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]

conf = requests.get(base + "/.well-known/fxa-client-configuration").json()
assert conf["auth_server_base_url"] == base + "/v1", conf
assert conf["sync_tokenserver_base_url"] == base, conf
assert requests.get(base + "/.well-known/openid-configuration").json()["jwks_uri"] == base + "/v1/jwks"

client = fxa.core.Client(server_url=conf["auth_server_base_url"])

# Sign-up over the API (the server runs with open sign-ups), then the operator's account.
new = client.create_account("new-" + email, password, keys=True)
assert len(new.uid) == 32 and new.token, new.uid
new_ka, new_kb = new.fetch_keys()
assert len(new_kb) == 32

session = client.login(email, password, keys=True)
assert session.verified is True
ka, kb = session.fetch_keys()
again = client.login(email, password, keys=True)
ka2, kb2 = again.fetch_keys()
assert (ka, kb) == (ka2, kb2), "kB must unwrap to the same value on every sign-in"
assert kb != new_kb

try:
    client.login(email, password + "x")
    raise AssertionError("a wrong password signed in")
except fxa.errors.ClientError as e:
    assert e.errno == 103, e.details

session.check_session_status()
assert session.get_email_status()["verified"] is True
assert client.get_account_status(session.uid)["exists"] is True

# fxa-credentials: an oldsync access token straight from the session.
grant = session.apiclient.post(
    "/oauth/token",
    {"grant_type": "fxa-credentials", "client_id": FIREFOX, "scope": OLDSYNC,
     "access_type": "offline"},
    auth=session._auth,
)
assert grant["token_type"] == "bearer" and grant["scope"] == OLDSYNC, grant
assert grant["refresh_token"], grant

keydata = session.apiclient.post(
    "/account/scoped-key-data", {"client_id": FIREFOX, "scope": OLDSYNC},
    auth=session._auth,
)[OLDSYNC]
assert keydata["identifier"] == OLDSYNC, keydata
client_state = hashlib.sha256(kb).digest()[:16]
kid = "%d-%s" % (keydata["keyRotationTimestamp"],
                 base64.urlsafe_b64encode(client_state).decode().rstrip("="))

# The tokenserver trusts the service's own token, and the node takes its Hawk token.
r = requests.get(base + "/1.0/sync/1.5", headers={
    "Authorization": "Bearer " + grant["access_token"], "X-KeyID": kid})
assert r.status_code == 200, (r.status_code, r.text)
sync = r.json()
req = requests.Request("GET", sync["api_endpoint"] + "/info/collections").prepare()
hawkauthlib.sign_request(req, sync["id"], sync["key"])
r = requests.Session().send(req)
assert r.status_code == 200, (r.status_code, r.text)

# The refresh token gives another access token; destroyed, it gives none.
refreshed = session.apiclient.post("/oauth/token", {
    "grant_type": "refresh_token", "client_id": FIREFOX,
    "refresh_token": grant["refresh_token"]})
assert refreshed["access_token"], refreshed
session.apiclient.post("/oauth/destroy", {"client_id": FIREFOX, "token": grant["refresh_token"]})
try:
    session.apiclient.post("/oauth/token", {
        "grant_type": "refresh_token", "client_id": FIREFOX,
        "refresh_token": grant["refresh_token"]})
    raise AssertionError("a destroyed refresh token still works")
except fxa.errors.ClientError:
    pass

# Authorization code with PKCE, verified against the published JWK set; the profile.
oauth = fxa.oauth.Client(client_id=FIREFOX, server_url=base + "/v1")
token = oauth.authorize_token(session, scope="profile")
info = oauth.verify_token(token, scope="profile")
assert info["user"] == session.uid, info
profile = requests.get(conf["profile_server_base_url"] + "/v1/profile",
                       headers={"Authorization": "Bearer " + token}).json()
assert profile["email"] == email and profile["uid"] == session.uid, profile

# Devices.
dev = session.apiclient.post("/account/device", {"name": "pyfxa", "type": "desktop"},
                             auth=session._auth)
listed = session.apiclient.get("/account/devices", auth=session._auth)
assert [d["id"] for d in listed] == [dev["id"]] and listed[0]["isCurrentDevice"], listed

# Destroyed sessions are refused.
session.destroy_session()
try:
    session.check_session_status()
    raise AssertionError("a destroyed session still works")
except fxa.errors.ClientError as e:
    assert e.errno == 110, e.details
again.check_session_status()
print("ok")
