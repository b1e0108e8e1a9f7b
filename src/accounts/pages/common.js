// What syncstore's account pages (signin.js, settings.js) share: bytes, onepw password
// stretching and key bundles (the password never leaves the page), the accounts API, and
// Firefox's WebChannel ("account_updates"). Loaded before the page's own script.
"use strict";

const NS = "identity.mozilla.com/picl/v1/";
const SYNC_SCOPE = "https://identity.mozilla.com/apps/oldsync";
const CHANNEL = "account_updates";
const enc = new TextEncoder();
const subtle = crypto.subtle;

// --- bytes -------------------------------------------------------------------------------

const hex = b => Array.from(b, x => x.toString(16).padStart(2, "0")).join("");
const unhex = s => new Uint8Array(s.match(/../g).map(h => parseInt(h, 16)));
const b64url = b => btoa(String.fromCharCode(...b)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
const unb64url = s => Uint8Array.from(atob(s.replace(/-/g, "+").replace(/_/g, "/")), c => c.charCodeAt(0));
const concat = (...parts) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let i = 0;
  for (const p of parts) { out.set(p, i); i += p.length; }
  return out;
};
const xor = (a, b) => a.map((x, i) => x ^ b[i]);
const u32 = n => new Uint8Array([n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255]);

// --- onepw -------------------------------------------------------------------------------

/** HKDF-SHA256 with an empty salt; `info` is a string, `len` bytes out. */
async function hkdf(ikm, info, len) {
  const key = await subtle.importKey("raw", ikm, "HKDF", false, ["deriveBits"]);
  const bits = await subtle.deriveBits(
    { name: "HKDF", hash: "SHA-256", salt: new Uint8Array(0), info: enc.encode(info) }, key, len * 8);
  return new Uint8Array(bits);
}

/** PBKDF2 quickStretch, then authPW (sent) and unwrapBKey (kept here). */
async function stretch(email, password) {
  const key = await subtle.importKey("raw", enc.encode(password), "PBKDF2", false, ["deriveBits"]);
  const quick = new Uint8Array(await subtle.deriveBits(
    { name: "PBKDF2", hash: "SHA-256", salt: enc.encode(NS + "quickStretch:" + email), iterations: 1000 },
    key, 256));
  return { authPW: await hkdf(quick, NS + "authPW", 32), unwrapBKey: await hkdf(quick, NS + "unwrapBkey", 32) };
}

/** A token's id (sent as `Bearer <prefix>_<id>`) and bundle key. */
async function tokenKeys(tokenHex, kind) {
  const m = await hkdf(unhex(tokenHex), NS + kind, 96);
  return { id: hex(m.slice(0, 32)), bundleKey: m.slice(64) };
}

/** Opens an `account/keys` bundle: kA and wrapKb, once the HMAC checks. */
async function unbundleKeys(bundleKey, bundleHex) {
  const data = unhex(bundleHex);
  const ct = data.slice(0, data.length - 32), tag = data.slice(data.length - 32);
  const m = await hkdf(bundleKey, NS + "account/keys", 32 + ct.length);
  const mac = await subtle.importKey("raw", m.slice(0, 32), { name: "HMAC", hash: "SHA-256" }, false, ["verify"]);
  if (!(await subtle.verify("HMAC", mac, tag, ct))) throw new Error("the key bundle failed its integrity check");
  const plain = xor(ct, m.slice(32));
  return { kA: plain.slice(0, 32), wrapKb: plain.slice(32, 64) };
}

/** Sync's scoped key from kB (Firefox's legacy oldsync derivation). */
async function syncKey(kB, meta) {
  const hash = new Uint8Array(await subtle.digest("SHA-256", kB));
  return {
    scope: SYNC_SCOPE,
    kty: "oct",
    kid: `${meta.keyRotationTimestamp}-${b64url(hash.slice(0, 16))}`,
    k: b64url(await hkdf(kB, NS + "oldsync", 64)),
  };
}

/** Compact JWE (ECDH-ES, A256GCM) of `plain` for the P-256 public key `jwk`. */
async function jwe(jwk, plain) {
  const ecdh = { name: "ECDH", namedCurve: "P-256" };
  const peer = await subtle.importKey("jwk", { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y }, ecdh, false, []);
  const eph = await subtle.generateKey(ecdh, true, ["deriveBits"]);
  const z = new Uint8Array(await subtle.deriveBits({ name: "ECDH", public: peer }, eph.privateKey, 256));
  // Concat KDF (JWA 4.6) for one SHA-256 block: round 1, Z, AlgorithmID "A256GCM",
  // empty PartyUInfo and PartyVInfo, 256 bits.
  const alg = enc.encode("A256GCM");
  const otherInfo = concat(u32(alg.length), alg, u32(0), u32(0), u32(256));
  const cek = new Uint8Array(await subtle.digest("SHA-256", concat(u32(1), z, otherInfo)));
  const epk = await subtle.exportKey("jwk", eph.publicKey);
  const header = { alg: "ECDH-ES", enc: "A256GCM", epk: { kty: epk.kty, crv: epk.crv, x: epk.x, y: epk.y } };
  if (jwk.kid) header.kid = jwk.kid;
  const protectedHeader = b64url(enc.encode(JSON.stringify(header)));
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const key = await subtle.importKey("raw", cek, "AES-GCM", false, ["encrypt"]);
  const sealed = new Uint8Array(await subtle.encrypt(
    { name: "AES-GCM", iv, additionalData: enc.encode(protectedHeader), tagLength: 128 }, key, plain));
  const ct = sealed.slice(0, sealed.length - 16), tag = sealed.slice(sealed.length - 16);
  return `${protectedHeader}..${b64url(iv)}.${b64url(ct)}.${b64url(tag)}`;
}

// --- the server --------------------------------------------------------------------------

/** An accounts API error: `errno` as FxA numbers them. */
class ApiError extends Error {
  constructor(body) {
    super(body.message || "request failed");
    this.errno = body.errno;
    this.body = body;
  }
}

async function api(method, path, body, bearer) {
  const headers = { "Content-Type": "application/json" };
  if (bearer) headers.Authorization = "Bearer " + bearer;
  const r = await fetch("/v1" + path, { method, headers, body: body && JSON.stringify(body), credentials: "omit" });
  const json = await r.json().catch(() => ({ errno: 999, message: `HTTP ${r.status}` }));
  if (!r.ok) throw new ApiError(json);
  return json;
}

// --- Firefox's WebChannel ----------------------------------------------------------------

const pending = new Map();
let nextMessageId = 1;
window.addEventListener("WebChannelMessageToContent", e => {
  const d = e.detail;
  if (!d || d.id !== CHANNEL || !d.message) return;
  const waiter = pending.get(d.message.messageId);
  if (waiter) {
    pending.delete(d.message.messageId);
    waiter(d.message);
  } else if (d.message.errno) {
    // "No Such Channel": this page is not Firefox's sign-in page for this server.
    for (const w of pending.values()) w(d.message);
    pending.clear();
  }
});

/** Tells Firefox something without waiting: on `fxaccounts:delete` and `logout` Firefox
 *  signs out and drops the channel before it could answer (ESR 153). */
function tellFirefox(command, data) {
  const messageId = String(nextMessageId++);
  window.dispatchEvent(new CustomEvent("WebChannelMessageToChrome", {
    detail: JSON.stringify({ id: CHANNEL, message: { command, data, messageId } }),
  }));
}

/** Sends a command to Firefox and waits for its answer's `data`. */
function toFirefox(command, data) {
  const messageId = String(nextMessageId++);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      pending.delete(messageId);
      reject(new Error("Firefox did not answer: open this page from Firefox's Sync sign-in"));
    }, 30000);
    pending.set(messageId, msg => {
      clearTimeout(timer);
      if (msg.errno) reject(new Error("Firefox refused the message: " + (msg.error || msg.errno)));
      else if (msg.data && msg.data.error) reject(new Error("Firefox: " + (msg.data.error.message || msg.data.error)));
      else resolve(msg.data || {});
    });
    window.dispatchEvent(new CustomEvent("WebChannelMessageToChrome", {
      detail: JSON.stringify({ id: CHANNEL, message: { command, data, messageId } }),
    }));
  });
}

// --- the page ----------------------------------------------------------------------------

const params = new URLSearchParams(location.search);
const $ = id => document.getElementById(id);

function show(text, kind) {
  const s = $("status");
  s.textContent = text;
  s.className = kind || "";
}
