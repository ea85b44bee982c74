#!/usr/bin/python3
"""Real mail clients for sslwrap's integration tests: Python's own imaplib, poplib and smtplib doing STARTTLS, and a
plain IMAP-over-TLS login from a chosen source address (for the PROXY protocol tests). Each prints what it observed
as `key: value` lines for the Rust test to check; a protocol error ends it with a traceback and a non-zero status.
Certificates are not verified: the tests use a throw-away CA and are about the protocol, not the PKI."""

import imaplib
import poplib
import smtplib
import socket
import ssl
import sys

TIMEOUT = 20


def say(key, value):
    print(f"{key}: {value}", flush=True)


def context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class SourcedIMAP4(imaplib.IMAP4):
    """imaplib's client, connecting from a chosen local address (imaplib has no parameter for it)."""

    def __init__(self, host, port, source):
        self.source = source
        super().__init__(host, port, timeout=TIMEOUT)

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout, source_address=(self.source, 0))


def imap(port, user, password, source="127.0.0.1"):
    client = SourcedIMAP4("127.0.0.1", int(port), source)
    say("local_port", client.sock.getsockname()[1])
    say("caps_before", " ".join(client.capabilities))
    client.starttls(ssl_context=context())  # imaplib asks for CAPABILITY again once TLS is up
    say("tls", client.sock.version())
    say("caps_after", " ".join(client.capabilities))
    typ, _ = client.login(user, password)
    say("login", typ)
    typ, data = client.select("INBOX")
    say("exists", data[0].decode())
    typ, data = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    say("subject", data[0][1].decode().strip())
    client.logout()
    say("done", "yes")


def pop3(port, user, password):
    client = poplib.POP3("127.0.0.1", int(port), timeout=TIMEOUT)
    say("capa_before", " ".join(sorted(client.capa())))
    client.stls(context=context())  # poplib itself refuses unless CAPA listed STLS
    say("tls", client.sock.version())
    say("capa_after", " ".join(sorted(client.capa())))
    client.user(user)
    client.pass_(password)
    count, _ = client.stat()
    say("stat", count)
    _, lines, _ = client.retr(1)
    subject = next(line for line in lines if line.lower().startswith(b"subject:"))
    say("subject", subject.decode())
    client.quit()
    say("done", "yes")


def smtp(port, sender, recipient, subject):
    client = smtplib.SMTP("127.0.0.1", int(port), timeout=TIMEOUT)
    client.ehlo("client.example")
    say("ehlo_before", " ".join(sorted(client.esmtp_features)))
    client.starttls(context=context())  # smtplib forgets the EHLO answer, as RFC 3207 says
    say("tls", client.sock.version())
    client.ehlo("client.example")
    say("ehlo_after", " ".join(sorted(client.esmtp_features)))
    message = (f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: {subject}\r\n\r\n"
               "Sent by smtplib through sslwrap after STARTTLS.\r\n")
    refused = client.sendmail(sender, [recipient], message)
    say("refused", refused)
    client.quit()
    say("done", "yes")


def read_line(stream):
    line = stream.readline()
    if not line:
        raise EOFError("connection closed")
    return line.decode(errors="replace").rstrip("\r\n")


def imaps_login(port, source, user, password):
    """Implicit TLS from `source`: prints the local port (what a PROXY header must carry) and dovecot's answer to
    a plaintext LOGIN inside that TLS session."""
    family_host = "::1" if ":" in source else "127.0.0.1"
    raw = socket.create_connection((family_host, int(port)), timeout=TIMEOUT, source_address=(source, 0))
    say("local_port", raw.getsockname()[1])
    with context().wrap_socket(raw) as tls:
        stream = tls.makefile("rb")
        say("greeting", read_line(stream))
        tls.sendall(f"a LOGIN {user} {password}\r\n".encode())
        while True:
            line = read_line(stream)
            say("line", line)
            if line.startswith("a "):
                say("login_reply", line)
                break
        tls.sendall(b"z LOGOUT\r\n")
        while not read_line(stream).startswith("z "):
            pass
    say("done", "yes")


COMMANDS = {"imap": imap, "pop3": pop3, "smtp": smtp, "imaps-login": imaps_login}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
