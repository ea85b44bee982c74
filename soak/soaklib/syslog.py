"""The driver's side of a private syslog sink (syslog_sink.py): starts it, and reads back every line sslwrap sent
since the last reading, exactly, by sending a marker through the same socket and reading up to it (one socket's
datagrams arrive in order, so every line sent before the marker is in the file before it). No sleeps, no guessing.

It never parses what sslwrap said; judge.py does."""

import os
import socket
import sys
import time

from benchlib import procs

SINK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "syslog_sink.py")


class Sink:
    def __init__(self, scratch, name):
        self.socket_path = os.path.join(scratch, f"{name}.syslog")
        self.output = os.path.join(scratch, f"{name}.syslog.txt")
        self.process = procs.start([sys.executable, SINK, self.socket_path, self.output],
                                   os.path.join(scratch, f"{name}.sink.log"))
        deadline = time.monotonic() + 15
        while not os.path.exists(self.socket_path):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise procs.BenchError(f"the syslog sink {name} did not start: "
                                       f"{procs.log_tail(os.path.join(scratch, f'{name}.sink.log'))}")
            time.sleep(0.02)
        self.sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.offset = 0
        self.markers = 0

    def lines_since_last(self, limit=60.0):
        """Every line received since the previous call (markers left out)."""
        self.markers += 1
        marker = f"soak-marker {self.markers}"
        self.sender.sendto(marker.encode(), self.socket_path)
        deadline = time.monotonic() + limit
        while True:
            with open(self.output, "rb") as received:
                received.seek(self.offset)
                data = received.read()
            end = data.find(marker.encode() + b"\n")
            if end >= 0:
                self.offset += end + len(marker) + 1
                text = data[:end].decode(errors="replace")
                return [line for line in text.splitlines() if not line.startswith("soak-marker ")]
            if time.monotonic() > deadline:
                raise procs.BenchError(f"the syslog sink took more than {limit:.0f} s to pass marker {self.markers}")
            time.sleep(0.01)
