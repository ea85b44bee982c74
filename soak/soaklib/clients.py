"""The kinds of connection the soak makes, each a real TLS (or raw TCP) client on loopback that checks what a
user would see: the bytes it sent arrived whole (the backend's sha256), the bytes the backend sent arrived whole,
the daemon refused garbage with an alert, cut a stalled handshake, ended a failed session without close_notify.

Each kind returns (the client's local port, None) when the daemon behaved, or a sentence saying what went
wrong in place of None; the port ties the daemon's log line to the connection. Kinds say how many syslog
lines their session must cause (EXPECTED_LINES). Nothing here samples processes or judges a burst.
"""

import hashlib
import selectors
import socket
import ssl
import struct
import threading
import time

IO_TIMEOUT = 60.0
LINGER_ZERO = struct.pack("ii", 1, 0)
# A TLS record header announcing a ClientHello, and the first bytes of one: the daemon waits for the rest.
PARTIAL_CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"

# Lines each kind must leave in syslog: none for a clean end, exactly one for each failure.
EXPECTED_LINES = {
    "full": 0, "starttls": 0, "client_reset": 1, "garbage": 1, "slow_handshake": 1,
    "backend_reset": 1, "backend_refused": 1,
}


class Outcome(Exception):
    """A client saw the daemon misbehave; the message says what it saw."""


def tls_context(ca_file):
    context = ssl.create_default_context(cafile=ca_file)
    context.check_hostname = True
    # Debian's Python sets this by default; with it an end without close_notify reads as a clean one, and the
    # soak could not tell a cut transfer from a complete one.
    context.options &= ~getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    return context


def _connect(port):
    return socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)


def _wrap(context, raw):
    # A ragged end (no close_notify) must raise, not read as a clean end: that is what the soak checks.
    return context.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)


def _read_to_close_notify(tls):
    """Everything the daemon sends until its close_notify; raises Outcome on an end without one."""
    chunks = []
    while True:
        try:
            chunk = tls.recv(65536)
        except (ssl.SSLEOFError, ConnectionResetError) as error:
            raise Outcome(f"session ended without close_notify after {sum(map(len, chunks))} bytes: {error}")
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _read_to_any_end(stream):
    """Reads until the peer ends the connection in any way; returns the bytes and whether it was a close_notify."""
    chunks = []
    while True:
        try:
            chunk = stream.recv(65536)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return b"".join(chunks), False
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)


def full(ports, context, rng):
    """A whole session: random bytes up, other random bytes down, sha256 checked both ways, close_notify both ways."""
    with _wrap(context, _connect(ports["main"])) as tls:
        port = tls.getsockname()[1]
        sent = rng.randbytes(rng.randint(1, 65536))
        tls.sendall(b"DIGEST %d\n" % len(sent) + sent)
        reply = _read_to_close_notify(tls)
        if reply[:32] != hashlib.sha256(sent).digest():
            return port, f"the backend got other bytes than the {len(sent)} sent (sha256 differs)"
        if len(reply) < 36:
            return port, f"reply cut short at {len(reply)} bytes"
        length = struct.unpack(">I", reply[32:36])[0]
        body, digest = reply[36:36 + length], reply[36 + length:]
        if len(body) != length or hashlib.sha256(body).digest() != digest:
            return port, f"the {length} bytes the backend sent arrived altered or cut ({len(reply)} bytes in all)"
        tls.unwrap()
    return port, None


def client_reset(ports, context, rng):
    """Announces 64 KiB, sends 8 KiB of it and resets the connection (SO_LINGER 0) mid-transfer."""
    tls = _wrap(context, _connect(ports["main"]))
    port = tls.getsockname()[1]
    tls.sendall(b"DIGEST 65536\n" + rng.randbytes(8192))
    tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
    tls.close()
    return port, None


def garbage(ports, context, rng):
    """A whole ClientHello message of random bytes: the daemon must answer with a TLS alert and close.

    The headers are real and say the message is complete: a random handshake header could announce a longer
    ClientHello, and the daemon would rightly wait for the rest until its handshake timeout (seen once in a
    million connections)."""
    with _connect(ports["main"]) as raw:
        port = raw.getsockname()[1]
        raw.sendall(b"\x16\x03\x01\x00\x40" + b"\x01\x00\x00\x3c" + rng.randbytes(60))
        answer, _ = _read_to_any_end(raw)
    if answer[:1] != b"\x15":
        return port, f"garbage ClientHello got {answer[:8].hex() or 'no bytes'} instead of an alert record"
    return port, None


def backend_reset(ports, context, rng):
    """The backend resets mid-transfer: the client must see the session end without close_notify."""
    with _wrap(context, _connect(ports["main"])) as tls:
        port = tls.getsockname()[1]
        tls.sendall(b"RESET\n")
        _, clean = _read_to_any_end(tls)
    if clean:
        return port, "a backend reset reached the client as a clean close_notify (a cut transfer looks complete)"
    return port, None


def backend_refused(ports, context, rng):
    """A daemon whose backend port is closed: handshake, then close_notify and no data."""
    with _wrap(context, _connect(ports["refused"])) as tls:
        port = tls.getsockname()[1]
        data, clean = _read_to_any_end(tls)
    if data or not clean:
        return port, f"refused backend: got {len(data)} bytes and {'a' if clean else 'no'} close_notify"
    return port, None


def _imap_lines_until(stream, tag, buffer):
    """Reads IMAP lines until the tagged reply to `tag`; returns (lines, rest of the buffer)."""
    lines = []
    while True:
        while b"\r\n" not in buffer:
            chunk = stream.recv(65536)
            if not chunk:
                raise Outcome(f"IMAP connection ended waiting for {tag}: {b''.join(lines)[:200]!r}")
            buffer += chunk
        line, buffer = buffer.split(b"\r\n", 1)
        lines.append(line)
        if line.startswith(tag.encode() + b" ") or (tag == "*" and line.startswith(b"* ")):
            return lines, buffer


def starttls(ports, context, rng):
    """IMAP STARTTLS against dovecot: greeting offers STARTTLS, TLS after it, a random tag round trip, LOGOUT."""
    raw = _connect(ports["starttls"])
    port = raw.getsockname()[1]
    try:
        greeting, rest = _imap_lines_until(raw, "*", b"")
        if b"STARTTLS" not in greeting[-1]:
            return port, f"greeting without STARTTLS: {greeting[-1][:120]!r}"
        raw.sendall(b"a1 STARTTLS\r\n")
        answer, rest = _imap_lines_until(raw, "a1", rest)
        if not answer[-1].startswith(b"a1 OK"):
            return port, f"STARTTLS refused: {answer[-1][:120]!r}"
        tls = _wrap(context, raw)
    except BaseException:
        raw.close()
        raise
    with tls:
        tag = "t" + rng.randbytes(12).hex()
        tls.sendall(f"a2 CAPABILITY\r\n{tag} NOOP\r\na3 LOGOUT\r\n".encode())
        replies = _read_to_close_notify(tls).split(b"\r\n")
        if not any(line.startswith(b"* CAPABILITY") and b"STARTTLS" not in line for line in replies):
            return port, f"no capability list without STARTTLS after TLS: {replies[:3]!r}"
        if not any(line.startswith(tag.encode() + b" OK") for line in replies):
            return port, f"tag {tag} did not come back: {replies[-4:]!r}"
        if not any(line.startswith(b"a3 OK") for line in replies):
            return port, f"LOGOUT not completed: {replies[-4:]!r}"
        tls.unwrap()
    return port, None


class SlowHandshakes:
    """Clients that send the start of a ClientHello and stall: the daemon must close them at its handshake
    timeout. Opened by the workers, watched here in one thread, so a stalled client holds no worker."""

    def __init__(self, limit):
        self.limit = limit
        self.selector = selectors.DefaultSelector()
        self.lock = threading.Lock()
        self.open = {}
        self.failures = []
        self.closed = 0
        self.wake_read, self.wake_write = socket.socketpair()
        self.selector.register(self.wake_read, selectors.EVENT_READ)
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def start(self, port):
        raw = _connect(port)
        raw.sendall(PARTIAL_CLIENT_HELLO)
        port = raw.getsockname()[1]
        raw.setblocking(False)
        with self.lock:
            self.open[raw] = time.monotonic() + self.limit
            self.selector.register(raw, selectors.EVENT_READ)
        self.wake_write.send(b"x")
        return port

    def _finish(self, raw, failure=None):
        with self.lock:
            self.selector.unregister(raw)
            del self.open[raw]
            if failure:
                self.failures.append(failure)
            else:
                self.closed += 1
        raw.close()

    def _watch(self):
        while True:
            for key, _ in self.selector.select(timeout=1.0):
                if key.fileobj is self.wake_read:
                    self.wake_read.recv(4096)
                    continue
                try:
                    if key.fileobj.recv(4096):
                        continue  # an alert before the close is fine; the end is what counts
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    pass
                self._finish(key.fileobj)
            now = time.monotonic()
            with self.lock:
                late = [raw for raw, deadline in self.open.items() if deadline < now]
            for raw in late:
                self._finish(raw, f"a stalled handshake was not closed within {self.limit:.0f} s")

    def wait_all(self):
        """Waits until every slow client has been closed by the daemon or has passed its own limit."""
        deadline = time.monotonic() + self.limit + 10
        while time.monotonic() < deadline:
            with self.lock:
                if not self.open:
                    return
            time.sleep(0.05)


KINDS = {
    "full": full, "client_reset": client_reset, "garbage": garbage, "backend_reset": backend_reset,
    "backend_refused": backend_refused, "starttls": starttls,
}
