"""PyPI's PyFxA changes an account's password on syncstore's accounts service, as the
onepw protocol has it: kB (and so the Sync key and its rotation time) stays, the
session that changed it gets a replacement, every other session is revoked, the old
password is refused and the new one signs in.

Usage: accounts_pyfxa_password.py BASE_URL EMAIL OLD_PASSWORD NEW_PASSWORD
"""
import sys

import fxa.core
import fxa.errors

OLDSYNC = "https://identity.mozilla.com/apps/oldsync"
FIREFOX = "5882386c6d801776"

base, email, old, new = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3], sys.argv[4]
client = fxa.core.Client(server_url=base + "/v1")


def rotation(session):
    data = session.apiclient.post(
        "/account/scoped-key-data", {"client_id": FIREFOX, "scope": OLDSYNC},
        auth=session._auth,
    )
    return data[OLDSYNC]["keyRotationTimestamp"]


def errno_of(call):
    try:
        call()
    except fxa.errors.ClientError as e:
        return e.details.get("errno"), e.details.get("code")
    raise AssertionError("expected the server to refuse")


changer = client.login(email, old, keys=True)
kb_before = changer.fetch_keys()[1]
rotation_before = rotation(changer)
other = client.login(email, old)  # another device's session
other.get_email_status()

changer.change_password(old, new)  # switches to the replacement session it answers
assert changer.get_email_status()["verified"], "the replacement session works"
assert rotation(changer) == rotation_before, "a password change keeps the key's rotation time"

assert errno_of(other.get_email_status) == (110, 401), "other sessions are revoked"
assert errno_of(lambda: client.login(email, old)) == (103, 400), "the old password is refused"

fresh = client.login(email, new, keys=True)
assert fresh.fetch_keys()[1] == kb_before, "kB survives a password change"
print("ok")
