"""Real clients in front of sslwrap, each asserting what its user would see: the file, the planted message, the echo.

Every client has a time limit: socket timeouts for the Python clients, --max-time for curl, and a deadline for the
interactive ones (openssl s_client, gnutls-cli) that are driven line by line like a person typing at them.
"""

import imaplib
import os
import poplib
import re
import secrets
import ssl
import subprocess
import threading
import time

from .procs import run, signal_group, tail_text
from .report import CheckFailed, fail_unless

CLIENT_TIMEOUT = 20
HOST = "127.0.0.1"


# -- TLS settings of the Python clients ---------------------------------------------------------------------------------

def trusting(cert_path):
    """A client that trusts exactly the documented self-signed certificate (the name check is off: CN only, no SAN)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cert_path)
    return context


def trusting_anything():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def certificate_der(cert_path):
    with open(cert_path, encoding="ascii") as pem:
        text = pem.read()
    block = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)
    return ssl.PEM_cert_to_DER_cert(block.group(0))


# -- IMAP and POP3 with Python's own clients ----------------------------------------------------------------------------

def imap_session(port, mailbox, context, host=HOST, hold=None):
    """LOGIN, SELECT INBOX, FETCH the planted message, LOGOUT. Returns the greeting and the server's certificate."""
    try:
        client = imaplib.IMAP4_SSL(host, port, ssl_context=context, timeout=CLIENT_TIMEOUT)
    except (OSError, imaplib.IMAP4.error) as error:
        raise CheckFailed(f"imaplib.IMAP4_SSL to {host}:{port} failed: {error!r}") from None
    try:
        greeting = client.welcome.decode(errors="replace")
        server_cert = client.sock.getpeercert(binary_form=True)
        client.login(mailbox.user, mailbox.password)
        status, data = client.select("INBOX")
        fail_unless(status == "OK" and data[0] == b"1", f"SELECT INBOX answered {status} {data!r}, expected 1 message")
        status, data = client.fetch("1", "(BODY.PEEK[])")
        fail_unless(status == "OK" and isinstance(data[0], tuple), f"FETCH answered {status} {data!r}")
        fail_unless(data[0][1] == mailbox.message,
                    f"FETCH returned {len(data[0][1])} bytes that are not the planted message: {data[0][1][:80]!r}")
        if hold:
            hold()
        status, _ = client.logout()
        fail_unless(status in ("BYE", "OK"), f"LOGOUT answered {status}")
    except (OSError, imaplib.IMAP4.error) as error:
        raise CheckFailed(f"IMAP session through {host}:{port} broke: {error!r}") from None
    finally:
        if client.state != "LOGOUT":
            close_quietly(client)
    return greeting, server_cert


def close_quietly(client):
    try:
        client.shutdown()
    except OSError:
        pass


def pop3_session(port, mailbox, context):
    """USER/PASS, STAT (one message of the planted size), RETR 1 (the planted bytes), QUIT."""
    try:
        client = poplib.POP3_SSL(HOST, port, context=context, timeout=CLIENT_TIMEOUT)
    except (OSError, poplib.error_proto) as error:
        raise CheckFailed(f"poplib.POP3_SSL to {HOST}:{port} failed: {error!r}") from None
    try:
        client.user(mailbox.user)
        client.pass_(mailbox.password)
        count, size = client.stat()
        fail_unless((count, size) == (1, len(mailbox.message)),
                    f"STAT says {count} messages, {size} octets; planted 1 of {len(mailbox.message)}")
        _, lines, _ = client.retr(1)
        fail_unless(b"\r\n".join(lines) + b"\r\n" == mailbox.message, "RETR 1 did not return the planted message")
        reply = client.quit()
        fail_unless(reply.startswith(b"+OK"), f"QUIT answered {reply!r}")
    except (OSError, poplib.error_proto) as error:
        raise CheckFailed(f"POP3 session through {HOST}:{port} broke: {error!r}") from None


def concurrent_imap_sessions(port, mailbox, context, count):
    """count IMAP sessions that are all logged in at the same moment (a barrier holds them) before logging out."""
    barrier = threading.Barrier(count, timeout=CLIENT_TIMEOUT * 2)
    failures = []

    def one_session(number):
        try:
            imap_session(port, mailbox, context, hold=barrier.wait)
        except threading.BrokenBarrierError:
            failures.append(f"#{number}: not all {count} sessions were up at once")
        except Exception as error:  # every session's fate is reported, whatever broke it
            failures.append(f"#{number}: {error}")
            barrier.abort()

    threads = [threading.Thread(target=one_session, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=CLIENT_TIMEOUT * 4)
    fail_unless(not any(t.is_alive() for t in threads), "some sessions were still running after their time limit")
    # A broken barrier reports in every thread; the first real cause is the one worth reading.
    causes = [f for f in failures if "not all" not in f] or failures
    fail_unless(not failures, f"{len(failures)} of {count} sessions failed, first: {causes[0] if causes else ''}")


# -- command-line clients -----------------------------------------------------------------------------------------------

def https_fetch(port, payload, scratch):
    """curl -k fetches the known file through sslwrap; the bytes must be the file's bytes."""
    out = os.path.join(scratch, f"curl-{port}.out")
    status, said = run(["curl", "-sS", "-k", "--max-time", str(CLIENT_TIMEOUT), "-o", out,
                        f"https://{HOST}:{port}/payload.bin"], timeout=CLIENT_TIMEOUT + 5)
    fail_unless(status == 0, f"curl exited {status}: {tail_text(said)}")
    with open(out, "rb") as fetched:
        body = fetched.read()
    os.remove(out)
    fail_unless(body == payload, f"curl got {len(body)} bytes that differ from the {len(payload)}-byte file")
    return f"{len(body)} bytes identical"


def curl_imap_fetch(port, mailbox, scratch):
    """curl's own IMAP client (imaps:// URL) fetches message 1 of INBOX."""
    out = os.path.join(scratch, f"curl-imap-{port}.out")
    status, said = run(["curl", "-sS", "-k", "--max-time", str(CLIENT_TIMEOUT), "-o", out,
                        "--user", f"{mailbox.user}:{mailbox.password}",
                        f"imaps://{HOST}:{port}/INBOX;MAILINDEX=1"], timeout=CLIENT_TIMEOUT + 5)
    fail_unless(status == 0, f"curl exited {status}: {tail_text(said)}")
    with open(out, "rb") as fetched:
        body = fetched.read()
    os.remove(out)
    fail_unless(body == mailbox.message, f"curl fetched {len(body)} bytes that are not the planted message")


class Conversation:
    """An interactive client program, fed lines on stdin while its output is read, every wait bounded."""

    def __init__(self, argv, timeout=CLIENT_TIMEOUT):
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.deadline = time.monotonic() + timeout
        self.output = b""
        self.position = 0
        self.ended = False
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self.read_output, daemon=True)
        self.reader.start()

    def read_output(self):
        while True:
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            with self.changed:
                self.output += chunk
                self.ended = not chunk
                self.changed.notify_all()
            if not chunk:
                self.proc.stdout.close()
                return

    def expect(self, pattern, what):
        """Waits for pattern (bytes regex, multiline) after what was already matched; returns the match."""
        regex = re.compile(pattern, re.M)
        with self.changed:
            while True:
                match = regex.search(self.output, self.position)
                if match:
                    self.position = match.end()
                    return match
                remaining = self.deadline - time.monotonic()
                if self.ended or remaining <= 0:
                    ending = "the client ended" if self.ended else "time ran out"
                    unread = tail_text(self.output[self.position:])
                    raise CheckFailed(f"{self.argv[0]}: expected {what}, but {ending}; it printed: {unread}")
                self.changed.wait(min(remaining, 0.5))

    def send(self, line):
        try:
            self.proc.stdin.write(line.encode() + b"\r\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise CheckFailed(f"{self.argv[0]} ended before we could send {line!r}") from None

    def close(self):
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            signal_group(self.proc.pid, 9)
            self.proc.wait(timeout=5)
        self.reader.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def s_client(port, *options):
    return ["openssl", "s_client", "-connect", f"{HOST}:{port}", *options]


def echo_through(port):
    """openssl s_client sends a line through the telnets wrapper; the line echo behind it sends it back."""
    token = "compat-echo-" + secrets.token_hex(8)
    with Conversation(s_client(port, "-quiet")) as client:
        client.send(token)
        client.expect(re.escape(token.encode()), f"the echo of {token}")
    return "line echoed back"


def imap_dialogue(client, mailbox, login=True):
    """The commands of a short IMAP session typed into an interactive TLS client, each answer checked."""
    if login:
        client.send(f"a1 LOGIN {mailbox.user} {mailbox.password}")
        client.expect(rb"^a1 OK", "a1 OK to LOGIN")
    client.send("a2 SELECT INBOX")
    client.expect(rb"^\* 1 EXISTS", "* 1 EXISTS")
    client.expect(rb"^a2 OK", "a2 OK to SELECT")
    client.send("a3 FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    client.expect(re.escape(mailbox.subject.encode()), "the planted message's subject")
    client.expect(rb"^a3 OK", "a3 OK to FETCH")
    client.send("a4 LOGOUT")
    client.expect(rb"^a4 OK", "a4 OK to LOGOUT")


def preauth_session(port, mailbox):
    """The -exec line: the imap binary greets with PREAUTH (no login), then serves a real mailbox."""
    with Conversation(s_client(port, "-quiet")) as client:
        client.expect(rb"^\* PREAUTH", "the * PREAUTH greeting")
        imap_dialogue(client, mailbox, login=False)
    return "* PREAUTH, then SELECT and FETCH answered"


def gnutls_imap_session(port, mailbox):
    """GnuTLS's client (not OpenSSL) through the imaps line: handshake, then a whole IMAP session."""
    with Conversation(["gnutls-cli", "--insecure", "--port", str(port), HOST]) as client:
        client.expect(rb"Handshake was completed", "'Handshake was completed'")
        client.expect(rb"^\* OK", "the IMAP greeting")
        imap_dialogue(client, mailbox)


LEGACY_CLIENT = ("-tls1", "-cipher", "DEFAULT:@SECLEVEL=0")


def legacy_session(port, mailbox):
    """A TLS 1.0-only OpenSSL client gets a TLSv1 session and a working IMAP login through it."""
    with Conversation(s_client(port, *LEGACY_CLIENT)) as client:
        # s_client prints "Protocol : TLSv1" even for a failed handshake; the "New, ..." line names a real session.
        client.expect(rb"^New, TLSv1(\.0)?, Cipher is [A-Z0-9]", "a TLSv1.0 session ('New, TLSv1.0, Cipher is ...')")
        client.expect(rb"^\* OK", "the IMAP greeting")
        imap_dialogue(client, mailbox)
    return "TLSv1 session, IMAP login and FETCH worked"


def legacy_refused(port):
    """The same TLS 1.0 client against a default line: TCP connects, the handshake is refused, no IMAP greeting."""
    status, said = run(s_client(port, *LEGACY_CLIENT), timeout=CLIENT_TIMEOUT)
    fail_unless(b"CONNECTED(" in said, f"the TCP connection itself failed: {tail_text(said)}")
    fail_unless(b"* OK" not in said, "the TLS 1.0 client got through to the IMAP greeting")
    fail_unless(status != 0, f"s_client exited 0 (handshake accepted?): {tail_text(said)}")
    alert = re.search(rb"(alert [a-z ]+|no protocols available|unsupported protocol|handshake failure)", said)
    return "handshake refused" + (f": {alert.group(1).decode()}" if alert else "")
