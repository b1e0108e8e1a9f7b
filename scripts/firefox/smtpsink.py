#!/usr/bin/env python3
"""A tiny SMTP sink on 127.0.0.1 for the Firefox scenarios (stdlib only).

Usage: smtpsink.py MAIL_DIR
Listens on a free port of 127.0.0.1 and prints `port N` as its first stdout line; speaks
enough SMTP (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT; no TLS, no AUTH) for the
server's mailer, and writes every message it accepts (the DATA, dot-unstuffed) to
MAIL_DIR/NNN.eml, atomically (written as .tmp, then renamed), before answering 250.
`read_mails(MAIL_DIR)` (scenarios.py) parses them. Bounded: at most 100 messages of
at most 1 MB each, lines of at most 8 KB; runs until killed.
"""

import email
import email.policy
import os
import socketserver
import sys
import threading

MAX_MESSAGES = 100
MAX_MESSAGE = 1 << 20
MAX_LINE = 8192


class Sink(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, mail_dir):
        super().__init__(("127.0.0.1", 0), Session)
        self.mail_dir = mail_dir
        self.lock = threading.Lock()
        self.count = 0

    def store(self, data):
        """Writes one message; False when the sink is full."""
        with self.lock:
            if self.count >= MAX_MESSAGES:
                return False
            self.count += 1
            name = os.path.join(self.mail_dir, "%03d.eml" % self.count)
        with open(name + ".tmp", "wb") as f:
            f.write(data)
        os.replace(name + ".tmp", name)
        return True


class Session(socketserver.StreamRequestHandler):
    timeout = 60

    def reply(self, text):
        self.wfile.write(text.encode() + b"\r\n")
        self.wfile.flush()

    def line(self):
        raw = self.rfile.readline(MAX_LINE + 2)
        if not raw:
            return None
        return raw.rstrip(b"\r\n")

    def handle(self):
        self.reply("220 sink ESMTP")
        while True:
            line = self.line()
            if line is None:
                return
            verb = line.split(b" ", 1)[0].upper()
            if verb == b"EHLO":
                self.reply("250-sink\r\n250 8BITMIME")
            elif verb == b"DATA":
                self.reply("354 go on")
                data, size = [], 0
                while True:
                    part = self.line()
                    if part is None:
                        return
                    if part == b".":
                        break
                    if part.startswith(b"."):
                        part = part[1:]
                    size += len(part) + 2
                    if size > MAX_MESSAGE:
                        self.reply("552 too big")
                        return
                    data.append(part)
                ok = self.server.store(b"\r\n".join(data) + b"\r\n")
                self.reply("250 queued" if ok else "452 full")
            elif verb == b"QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("250 ok")


def read_mails(mail_dir):
    """The messages in MAIL_DIR, oldest first, as email.message.EmailMessage."""
    names = sorted(n for n in os.listdir(mail_dir) if n.endswith(".eml"))
    mails = []
    for n in names:
        with open(os.path.join(mail_dir, n), "rb") as f:
            mails.append(email.message_from_bytes(f.read(), policy=email.policy.default))
    return mails


def main():
    mail_dir = sys.argv[1]
    os.makedirs(mail_dir, exist_ok=True)
    server = Sink(mail_dir)
    print("port %d" % server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
