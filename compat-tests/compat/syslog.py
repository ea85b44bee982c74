"""Collects what sslwrap logs: a private datagram socket, named to sslwrap by SSLWRAP_SYSLOG_SOCKET, read by a thread.

The host may have no syslog daemon at all (no /dev/log), and a failure line is far more useful with sslwrap's own words.
"""

import os
import re
import socket
import threading

PRIORITY = re.compile(rb"^<\d+>")


class SyslogCollector:
    def __init__(self, path, copy_path):
        self.path = path
        self.messages = []
        self.lock = threading.Lock()
        self.copy = open(copy_path, "a", encoding="utf-8")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        # sslwrap mostly runs as the unprivileged 'sslwrap' user and must be able to send here.
        os.chmod(path, 0o666)
        self.sock.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self.read_forever, name="syslog", daemon=True)
        self.thread.start()

    def read_forever(self):
        while self.running:
            try:
                datagram = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            text = PRIORITY.sub(b"", datagram).decode("utf-8", "replace").strip()
            with self.lock:
                self.messages.append(text)
                self.copy.write(text + "\n")
                self.copy.flush()

    def mark(self):
        with self.lock:
            return len(self.messages)

    def since(self, mark):
        with self.lock:
            return list(self.messages[mark:])

    def close(self):
        self.running = False
        self.thread.join(timeout=2)
        self.sock.close()
        self.copy.close()
