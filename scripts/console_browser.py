#!/usr/bin/env python3
"""A real browser for the console's tests (tests/it/console.rs): Debian's chromium,
headless, driven by Playwright for Python. The test sends one JSON command a line on
standard input and reads one JSON answer a line on standard output:

    {"cmd": "open", "url": "http://127.0.0.1:PORT/admin/"}
    {"cmd": "fill", "sel": "#token", "value": "..."}
    {"cmd": "click", "sel": "#login-button"}
    {"cmd": "wait_text", "sel": "#login-error", "text": "refused", "timeout": 10000}
    {"cmd": "confirm", "timeout": 10000}     -> the confirm dialog's text, then "Confirm"
    {"cmd": "shots", "name": "01-login"}     -> PNGs at laptop and phone size
    {"cmd": "eval", "js": "() => ..."}
    {"cmd": "errors"}                        -> console errors and page errors so far
    {"cmd": "quit"}

Answers are {"ok": true, "result": ...} or {"ok": false, "error": "..."}. Every wait is
bounded by its timeout (default 10 s). Screenshots go to --out.
"""

import argparse
import json
import os
import sys

from playwright.sync_api import sync_playwright

LAPTOP = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}

# No horizontal scrolling of the page, and what is shown is not cut off on the right.
OVERFLOW_JS = """() => {
  const doc = document.documentElement;
  const wide = [];
  for (const e of document.querySelectorAll('body *')) {
    if (e.closest('.scroll') || e.closest('dialog:not([open])')) continue;
    const r = e.getBoundingClientRect();
    if (r.width > 0 && r.right > doc.clientWidth + 1) {
      wide.push((e.id ? '#' + e.id : e.tagName.toLowerCase()) + ' ' + Math.round(r.right));
      if (wide.length > 5) break;
    }
  }
  return {scrollWidth: doc.scrollWidth, clientWidth: doc.clientWidth, wide};
}"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="where screenshots go")
    ap.add_argument("--chromium", default=os.environ.get("SYNCSTORE_CHROMIUM", "/usr/bin/chromium"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=args.chromium,
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--no-first-run", "--disable-dev-shm-usage"],
        )
        context = browser.new_context(viewport=LAPTOP)
        page = context.new_page()
        page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}")
                if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        reply({"ok": True, "result": "ready"})
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            try:
                cmd = json.loads(line)
                if cmd["cmd"] == "quit":
                    reply({"ok": True, "result": None})
                    break
                result = run(page, cmd, args.out, errors)
                reply({"ok": True, "result": result})
            except Exception as e:  # the test shows it and fails
                reply({"ok": False, "error": f"{type(e).__name__}: {e}"})
        context.close()
        browser.close()


def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def run(page, cmd, out, errors):
    c = cmd["cmd"]
    timeout = cmd.get("timeout", 10000)
    if c == "open":
        page.goto(cmd["url"], wait_until="load", timeout=timeout)
        return page.url
    if c == "fill":
        page.fill(cmd["sel"], cmd["value"], timeout=timeout)
        return None
    if c == "click":
        page.click(cmd["sel"], timeout=timeout)
        return None
    if c == "text":
        return page.text_content(cmd["sel"], timeout=timeout)
    if c == "visible":
        return page.is_visible(cmd["sel"])
    if c == "wait_text":
        page.wait_for_function(
            """([sel, text]) => { const e = document.querySelector(sel);
                return !!e && e.textContent.includes(text); }""",
            arg=[cmd["sel"], cmd["text"]], timeout=timeout)
        return page.text_content(cmd["sel"])
    if c == "wait_js":
        # Waits until the function returns something truthy; answers it.
        handle = page.wait_for_function(cmd["js"], arg=cmd.get("arg"), timeout=timeout,
                                        polling=cmd.get("polling", 250))
        return handle.json_value()
    if c == "confirm":
        page.wait_for_selector("#confirm[open]", timeout=timeout)
        text = page.text_content("#confirm-text")
        if cmd.get("shot"):
            shots(page, cmd["shot"], out)
        page.click("#confirm-no" if cmd.get("cancel") else "#confirm-yes", timeout=timeout)
        return text
    if c == "eval":
        return page.evaluate(cmd["js"], cmd.get("arg"))
    if c == "shots":
        return shots(page, cmd["name"], out)
    if c == "errors":
        return list(errors)
    raise ValueError(f"unknown command {c!r}")


def shots(page, name, out):
    """Full-page screenshots at laptop and phone size; what overflows at each."""
    found = {}
    for label, size in (("laptop", LAPTOP), ("phone", PHONE)):
        page.set_viewport_size(size)
        page.wait_for_timeout(150)  # one layout after the resize
        found[label] = page.evaluate(OVERFLOW_JS)
        page.screenshot(path=os.path.join(out, f"{name}-{label}.png"), full_page=True)
    page.set_viewport_size(LAPTOP)
    return found


if __name__ == "__main__":
    main()
