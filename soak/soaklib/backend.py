#!/usr/bin/python3
"""The soak's plaintext backend, run as a process of its own behind sslwrap: answers one request per connection.

    DIGEST n\n + n bytes  ->  sha256 of the n bytes, then 4-byte length m, m random bytes and their sha256;
                              then it half-closes and waits for the client's end (a clean end both ways)
    RESET\n               ->  4 KiB, then a reset (SO_LINGER 0): a backend that fails mid-transfer

It never logs per connection and never judges anything: the client checks what arrived.
Usage: backend.py PORT
"""

import hashlib
import random
import socket
import socketserver
import struct
import sys

LINGER_ZERO = struct.pack("ii", 1, 0)


def read_exact(stream, count):
    chunks, left = [], count
    while left:
        chunk = stream.recv(min(left, 65536))
        if not chunk:
            raise ConnectionError(f"end of data with {left} of {count} bytes missing")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_line(stream, limit=64):
    line = b""
    while not line.endswith(b"\n"):
        byte = stream.recv(1)
        if not byte or len(line) > limit:
            raise ConnectionError("no request line")
        line += byte
    return line.decode().split()


class Session(socketserver.BaseRequestHandler):
    def handle(self):
        stream = self.request
        stream.settimeout(120)
        request = read_line(stream)
        if request[0] == "RESET":
            stream.sendall(random.randbytes(4096))
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
            # Closed here: socketserver would shut the write side down first, and that FIN is a clean end.
            stream.close()
            return
        received = read_exact(stream, int(request[1]))
        answer = random.randbytes(random.randint(1, 65536))
        stream.sendall(hashlib.sha256(received).digest() + struct.pack(">I", len(answer)) + answer
                       + hashlib.sha256(answer).digest())
        stream.shutdown(socket.SHUT_WR)
        while stream.recv(65536):
            pass


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def handle_error(self, request, client_address):
        # A client that reset (the soak's own "client reset" kind) ends its session here; nothing to report.
        pass


def main():
    with Server(("127.0.0.1", int(sys.argv[1])), Session) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
