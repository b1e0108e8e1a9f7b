// syncstore's sign-in page: signs in to this server's accounts API (onepw, common.js),
// derives Sync's scoped key, encrypts it to the key Firefox put in the URL (keys_jwk, as
// a JWE: ECDH-ES + A256GCM), asks for an OAuth code and hands it to Firefox over its
// WebChannel, which completes the OAuth flow itself (PKCE verifier, token, scoped keys)
// and turns Sync on.
"use strict";

// --- the page ----------------------------------------------------------------------------

const WORKING = "Signing in…";
// The server's sign-up policy (closed, invite, open), rendered into the page.
const SIGNUPS = document.querySelector("main").dataset.signups || "closed";

function explain(e) {
  switch (e.errno) {
    case 102: return "There is no account with this email on this server.";
    case 103: return "Incorrect password.";
    case 114: return "Too many attempts. " + (e.body.retryAfter ? `Try again in ${e.body.retryAfter} seconds.` : "Try again later.");
    case 125: return SIGNUPS === "invite"
      ? "An invite code is needed to create an account here, and this one is unknown, used or expired: ask the server's operator for one."
      : "Sign-ups are closed on this server: ask its operator for an account.";
    case 183: return "Incorrect or expired verification code.";
    case 104: return "Enter the verification code sent to your email first.";
    case 101: return "An account with this email already exists: sign in instead.";
    default: return e.message || String(e);
  }
}

async function connect(signUp) {
  let email = $("email").value.trim();
  const password = $("password").value;
  if (!email || !password) throw new Error("Enter your email and password.");
  const clientId = params.get("client_id");
  const keysJwk = params.get("keys_jwk");
  const state = params.get("state");
  if (!clientId || !keysJwk || !state || !params.get("code_challenge")) {
    throw new Error("Open this page from Firefox (Settings, Sync, Sign in): the link carries Firefox's OAuth request.");
  }
  const scope = params.get("scope") || SYNC_SCOPE;
  const linked = await toFirefox("fxaccounts:can_link_account", { email });
  if (!linked.ok) throw new Error("Firefox declined to link this account.");

  let creds = await stretch(email, password);
  let session;
  try {
    const body = { email, authPW: hex(creds.authPW) };
    if (signUp && SIGNUPS === "invite") body.inviteCode = $("invite").value.trim();
    session = await api("POST", `/account/${signUp ? "create" : "login"}?keys=true`, body);
  } catch (e) {
    // The account's email differs in case: sign in with it as stored (onepw salts with it).
    if (e.errno !== 120 || !e.body.email) throw e;
    email = e.body.email;
    creds = await stretch(email, password);
    session = await api("POST", "/account/login?keys=true", { email, authPW: hex(creds.authPW) });
  }
  const sessionId = (await tokenKeys(session.sessionToken, "sessionToken")).id;
  if (session.verified === false) await verifyEmail(sessionId);
  const kft = await tokenKeys(session.keyFetchToken, "keyFetchToken");
  const { bundle } = await api("GET", "/account/keys", null, "fxk_" + kft.id);
  const { wrapKb } = await unbundleKeys(kft.bundleKey, bundle);
  const kB = xor(wrapKb, creds.unwrapBKey);

  const scopedKeys = {};
  const meta = await api("POST", "/account/scoped-key-data", { client_id: clientId, scope }, "fxs_" + sessionId);
  for (const [s, m] of Object.entries(meta)) {
    if (s === SYNC_SCOPE) scopedKeys[s] = await syncKey(kB, m);
  }
  const peer = JSON.parse(new TextDecoder().decode(unb64url(keysJwk)));
  const keysJwe = await jwe(peer, enc.encode(JSON.stringify(scopedKeys)));

  // The code first: a refusal here leaves Firefox untouched.
  const authz = await api("POST", "/oauth/authorization", {
    client_id: clientId, state, scope, access_type: params.get("access_type") || "offline",
    response_type: "code", code_challenge: params.get("code_challenge"),
    code_challenge_method: params.get("code_challenge_method") || "S256", keys_jwe: keysJwe,
  }, "fxs_" + sessionId);
  // Firefox keeps the session (it completes the OAuth flow with it), then trades the code.
  await toFirefox("fxaccounts:login", {
    email, uid: session.uid, sessionToken: session.sessionToken, verified: true, services: { sync: {} },
  });
  await toFirefox("fxaccounts:oauth_login", {
    code: authz.code, state: authz.state, redirect: authz.redirect, action: signUp ? "signup" : "signin",
  });
}

/** Asks for the code mailed to the new account's address until it verifies. */
function verifyEmail(sessionId) {
  $("code-field").hidden = false;
  $("submit").hidden = true;
  $("signup").hidden = true;
  show("We sent a 6-digit code to your email: enter it to continue.");
  return new Promise(resolve => {
    $("verify").disabled = false;
    $("resend").disabled = false;
    $("verify").onclick = async () => {
      try {
        await api("POST", "/session/verify_code", { code: $("code").value.trim() }, "fxs_" + sessionId);
        $("code-field").hidden = true;
        show(WORKING);
        resolve();
      } catch (err) {
        show(explain(err), "error");
      }
    };
    $("resend").onclick = async () => {
      try {
        await api("POST", "/session/resend_code", {}, "fxs_" + sessionId);
        show("A new code is on its way.");
      } catch (err) {
        show(explain(err), "error");
      }
    };
  });
}

function start() {
  if (SIGNUPS === "invite") {
    $("invite-field").hidden = false;
    if (params.get("invite")) $("invite").value = params.get("invite");
  }
  if (params.get("email")) $("email").value = params.get("email");
  const run = signUp => async e => {
    e.preventDefault();
    show(WORKING);
    for (const b of document.querySelectorAll("button")) b.disabled = true;
    try {
      await connect(signUp);
      show("Signed in. Firefox is now syncing.", "done");
      $("signin").hidden = true;
    } catch (err) {
      show(explain(err), "error");
      // A failure after the code prompt: offer signing in (or up) again.
      $("code-field").hidden = true;
      $("submit").hidden = false;
      $("signup").hidden = false;
    } finally {
      for (const b of document.querySelectorAll("button")) b.disabled = false;
    }
  };
  $("signin").addEventListener("submit", run(false));
  $("signup").addEventListener("click", run(true));
}

start();
