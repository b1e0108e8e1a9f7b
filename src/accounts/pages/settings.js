// syncstore's account settings page (Firefox's "Manage account" opens `/settings?...&uid=
// &email=`): changes the password per onepw (common.js): both passwords are stretched
// here, /password/change/start with the old authPW, the key bundle gives kB, and
// /password/change/finish stores the new authPW and kB wrapped under the new password
// (kB, so Sync's key, is kept). The server revokes every other session and returns a new
// one, which the page hands to Firefox (WebChannel "fxaccounts:change_password", as FxA's
// settings page does) so Firefox stays signed in and keeps syncing. Deleting the account
// signs in with the password, calls /account/destroy with that session and the password,
// and tells Firefox ("fxaccounts:delete"), which signs out.
"use strict";

const WORKING = "Changing password…";

function explain(e) {
  switch (e.errno) {
    case 102: return "There is no account with this email on this server.";
    case 103: return "Incorrect current password.";
    case 114: return "Too many attempts. " + (e.body.retryAfter ? `Try again in ${e.body.retryAfter} seconds.` : "Try again later.");
    default: return e.message || String(e);
  }
}

async function changePassword() {
  const email = $("email").value.trim();
  const current = $("current").value, next = $("new").value;
  if (!email) throw new Error("Open this page from Firefox (Settings, Sync, Manage account).");
  if (next.length < 8) throw new Error("The new password must have at least 8 characters.");
  const oldCreds = await stretch(email, current);
  const newCreds = await stretch(email, next);
  const started = await api("POST", "/password/change/start", { email, oldAuthPW: hex(oldCreds.authPW) });
  const kft = await tokenKeys(started.keyFetchToken, "keyFetchToken");
  const { bundle } = await api("GET", "/account/keys", null, "fxk_" + kft.id);
  const { wrapKb } = await unbundleKeys(kft.bundleKey, bundle);
  const kB = xor(wrapKb, oldCreds.unwrapBKey);
  const pct = await tokenKeys(started.passwordChangeToken, "passwordChangeToken");
  const session = await api("POST", "/password/change/finish", {
    authPW: hex(newCreds.authPW), wrapKb: hex(xor(kB, newCreds.unwrapBKey)),
  }, "fxpc_" + pct.id);
  await toFirefox("fxaccounts:change_password", {
    email, uid: session.uid, sessionToken: session.sessionToken, verified: true,
  });
}

async function deleteAccount() {
  const email = $("email").value.trim();
  if (!email) throw new Error("Open this page from Firefox (Settings, Sync, Manage account).");
  const creds = await stretch(email, $("delete-password").value);
  const authPW = hex(creds.authPW);
  const session = await api("POST", "/account/login", { email, authPW });
  const sk = await tokenKeys(session.sessionToken, "sessionToken");
  await api("POST", "/account/destroy", { email, authPW }, "fxs_" + sk.id);
  tellFirefox("fxaccounts:delete", { uid: session.uid });
}

function start() {
  if (params.get("email")) {
    $("email").value = params.get("email");
    $("who").textContent = "Signed in as " + params.get("email") + ".";
  }
  $("change").addEventListener("submit", async e => {
    e.preventDefault();
    show(WORKING);
    $("submit").disabled = true;
    try {
      await changePassword();
      show("Password changed. Firefox stays signed in.", "done");
      $("change").reset();
    } catch (err) {
      show(explain(err), "error");
    } finally {
      $("submit").disabled = false;
    }
  });
  $("delete").addEventListener("submit", async e => {
    e.preventDefault();
    show("Deleting the account…");
    $("delete-submit").disabled = true;
    try {
      await deleteAccount();
      show("The account is deleted; its Sync data is being removed. Firefox is signed out.", "done");
      $("delete").reset();
    } catch (err) {
      show(explain(err), "error");
      $("delete-submit").disabled = false;
    }
  });
}

start();
