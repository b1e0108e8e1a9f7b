"""A minimal Marionette client: length-prefixed JSON over TCP (`LEN:JSON`).

Commands are `[0, id, name, params]`, answers `[1, id, error, result]`. Only what the
harness needs: a session, the chrome context, and async scripts run in it.
"""

import json
import socket
import time


# The key of a web element reference in WebDriver's answers.
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


class MarionetteError(Exception):
    """A command Firefox answered with an error."""


class Marionette:
    """A connection to one Firefox's Marionette server."""

    def __init__(self, port, timeout=60.0, alive=lambda: True):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline or not alive():
                    raise
                time.sleep(0.25)
        self.sock.settimeout(None)
        self.buf = b""
        self.next_id = 0
        hello = self._read()
        if hello.get("marionetteProtocol") != 3:
            raise MarionetteError("unexpected handshake: %r" % hello)
        self.command("WebDriver:NewSession", {"capabilities": {"alwaysMatch": {}}})
        self.command("Marionette:SetContext", {"value": "chrome"})

    def _read(self):
        while b":" not in self.buf:
            self._fill()
        length, rest = self.buf.split(b":", 1)
        length = int(length)
        self.buf = rest
        while len(self.buf) < length:
            self._fill()
        msg, self.buf = self.buf[:length], self.buf[length:]
        return json.loads(msg)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise MarionetteError("Firefox closed the Marionette connection")
        self.buf += chunk

    def command(self, name, params):
        """Sends one command and returns its result (raises on an error answer)."""
        self.next_id += 1
        data = json.dumps([0, self.next_id, name, params]).encode()
        self.sock.sendall(b"%d:%s" % (len(data), data))
        while True:
            kind, msg_id, error, result = self._read()
            if kind == 1 and msg_id == self.next_id:
                break
        if error:
            raise MarionetteError("%s: %s\n%s" % (name, error.get("message"), error.get("stacktrace", "")))
        return result

    def run(self, script, args=(), timeout=120):
        """Runs an async chrome-context script: its body awaits, `return` gives the value.

        The script sees its arguments as `args` and runs inside an async function.
        """
        wrapped = (
            "const [args, resolve] = [Array.from(arguments).slice(0, -1), arguments[arguments.length - 1]];\n"
            "(async () => {\n%s\n})().then(v => resolve({ok: v === undefined ? null : v}),\n"
            "  e => resolve({err: String(e) + '\\n' + (e && e.stack || '')}));"
        ) % script
        self.command("WebDriver:SetTimeouts", {"script": int(timeout * 1000)})
        answer = self.command(
            "WebDriver:ExecuteAsyncScript", {"script": wrapped, "args": list(args), "newSandbox": False}
        )["value"]
        if "err" in answer:
            raise MarionetteError("script failed: %s" % answer["err"])
        return answer["ok"]

    def context(self, name):
        """Switches to the `chrome` or `content` context (the selected tab's page)."""
        self.command("Marionette:SetContext", {"value": name})

    def navigate(self, url):
        """Content context: loads `url` in the current tab and waits for it."""
        self.command("WebDriver:Navigate", {"url": url})

    def find(self, css):
        """Content context: the first element matching a CSS selector (its reference)."""
        return self.command("WebDriver:FindElement", {"using": "css selector", "value": css})["value"]

    def send_keys(self, element, text):
        """Types `text` into an element, as a user would."""
        self.command("WebDriver:ElementSendKeys", {"id": element[ELEMENT], "text": text})

    def clear(self, element):
        """Empties an input."""
        self.command("WebDriver:ElementClear", {"id": element[ELEMENT]})

    def click(self, element):
        """Clicks an element, as a user would."""
        self.command("WebDriver:ElementClick", {"id": element[ELEMENT]})

    def text(self, element):
        """An element's rendered text."""
        return self.command("WebDriver:GetElementText", {"id": element[ELEMENT]})["value"]

    def displayed(self, element):
        """Whether an element is shown (not hidden, not inside a hidden parent)."""
        return self.command("WebDriver:IsElementDisplayed", {"id": element[ELEMENT]})["value"]

    def quit(self):
        """Asks Firefox to quit."""
        try:
            self.command("Marionette:Quit", {"flags": ["eForceQuit"]})
        except (OSError, MarionetteError):
            pass
        self.sock.close()
