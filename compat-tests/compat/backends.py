"""The real services behind sslwrap, each a private instance on its own files: dovecot (IMAP, POP3, and the
pre-authenticated imap binary for -exec), nginx (HTTP) and a line echo (the 'telnet' of the telnets line)."""

import os
import secrets
import shutil
import socket
import time

from .procs import wait_listening
from .report import CheckFailed

MAIL_UID = 65534  # nobody: dovecot runs no mail session as root, and the test needs no user of its own
MAIL_GID = 65534
GREETING_TIMEOUT = 15


class Mailbox:
    """The test user's account and the one message the test plants in its INBOX."""

    def __init__(self, root):
        self.user = "tester"
        self.password = "compat-" + secrets.token_hex(6)
        self.home = os.path.join(root, "home", self.user)
        self.subject = "sslwrap compat check " + secrets.token_hex(8)
        self.message = (f"From: compat-tests <compat@localhost>\r\nTo: {self.user}@localhost\r\n"
                        f"Subject: {self.subject}\r\n\r\nThis message was planted by the test.\r\n").encode()

    def plant(self):
        maildir = os.path.join(self.home, "Maildir")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(maildir, sub), exist_ok=True)
        with open(os.path.join(maildir, "new", f"{int(time.time())}.compat.localhost"), "wb") as message:
            message.write(self.message)
        for directory, _, files in os.walk(os.path.dirname(self.home)):
            shutil.chown(directory, MAIL_UID, MAIL_GID)
            for name in files:
                shutil.chown(os.path.join(directory, name), MAIL_UID, MAIL_GID)


def dovecot_config(root, ports, other_computer, greeting_elsewhere):
    return f"""# Private dovecot for sslwrap compat-tests: plaintext IMAP/POP3 only; TLS is sslwrap's job.
base_dir = {root}/dovecot/run
state_dir = {root}/dovecot/state
log_path = {root}/dovecot/dovecot.log
instance_name = sslwrap-compat
protocols = imap pop3
listen = 127.0.0.1, {other_computer}
ssl = no
# sslwrap connects from 127.0.0.1 to {other_computer} for the -addr line, which dovecot does not count as secure.
disable_plaintext_auth = no
mail_location = maildir:~/Maildir
# The daemon scenario holds 20 sessions of one user from one address at once (default limit: 10).
mail_max_userip_connections = 50
# The standalone imap binary of the -exec line, not root, may not talk to the root-owned stats socket.
stats_writer_socket_path =
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/dovecot/passwd
}}
userdb {{
  driver = passwd-file
  args = {root}/dovecot/passwd
}}
service imap-login {{
  inet_listener imap {{
    port = {ports[143]}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {ports[110]}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
# The 'other computer' greets differently, so a client can tell which backend sslwrap reached.
local {other_computer} {{
  login_greeting = {greeting_elsewhere}
}}
"""


def start_dovecot(procs, root, mailbox, ports, other_computer, greeting_elsewhere):
    os.makedirs(os.path.join(root, "dovecot", "state"), exist_ok=True)
    with open(os.path.join(root, "dovecot", "passwd"), "w", encoding="utf-8") as passwd:
        passwd.write(f"{mailbox.user}:{{PLAIN}}{mailbox.password}:{MAIL_UID}:{MAIL_GID}::{mailbox.home}\n")
    conf = os.path.join(root, "dovecot", "dovecot.conf")
    with open(conf, "w", encoding="utf-8") as config:
        config.write(dovecot_config(root, ports, other_computer, greeting_elsewhere))
    proc = procs.start("dovecot", ["/usr/sbin/dovecot", "-F", "-c", conf])
    wait_listening(procs, proc, [ports[143], ports[110]])
    # The listener is up before the auth process; until that is ready dovecot greets with a 'Waiting' line.
    wait_for_greeting(("127.0.0.1", ports[143]), b"ready")
    return proc, conf


def wait_for_greeting(address, word, timeout=GREETING_TIMEOUT):
    deadline = time.monotonic() + timeout
    last = b""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(address, timeout=5) as conn:
                conn.settimeout(5)
                last = read_until(conn, word, deadline)
                if word in last:
                    conn.sendall(b"x LOGOUT\r\n")
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise CheckFailed(f"backend {address} never greeted with {word!r}; last said {last!r}")


def read_until(conn, word, deadline):
    data = b""
    while word not in data and time.monotonic() < deadline:
        try:
            chunk = conn.recv(4096)
        except socket.timeout:
            break
        if not chunk:
            break
        data += chunk
    return data


def imapd_wrapper_script(marker, mailbox, dovecot_conf):
    """sslwrap 2.0.6's -exec takes a program without arguments, so the arguments live in a wrapper, as users did."""
    return f"""#!/bin/sh
# {marker}: the -exec program of the inetd line. dovecot's imap binary serves a pre-authenticated
# session for the test user on stdin/stdout; sslwrap 2.0.6 passes no arguments, so they are set here.
# The inetd line runs as root, and dovecot's imap, run as root with a socket on stdout, refuses
# ("imap binary must not be started from inetd"): so drop to the mail user first, as a careful admin would.
USER={mailbox.user}
HOME={mailbox.home}
export USER HOME
exec setpriv --reuid={MAIL_UID} --regid={MAIL_GID} --clear-groups /usr/lib/dovecot/imap -c {dovecot_conf}
"""


def start_nginx(procs, root, port):
    """A real HTTP server behind the https line, serving one file of random bytes that the client must get intact."""
    base = os.path.join(root, "nginx")
    os.makedirs(os.path.join(base, "www"), exist_ok=True)
    payload = secrets.token_bytes(1024 * 1024 + 123)  # larger than a TLS record and not a round size
    with open(os.path.join(base, "www", "payload.bin"), "wb") as data:
        data.write(payload)
    temp_paths = "\n".join(f"  {kind}_temp_path {base}/{kind};"
                           for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = os.path.join(base, "nginx.conf")
    with open(conf, "w", encoding="utf-8") as config:
        config.write(f"""# Private nginx for sslwrap compat-tests: plain HTTP on loopback; TLS is sslwrap's job.
worker_processes 1;
pid {base}/nginx.pid;
error_log {base}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log {base}/access.log;
{temp_paths}
  server {{
    listen 127.0.0.1:{port};
    root {base}/www;
  }}
}}
""")
    # -e: nginx opens its compiled-in error log before reading the config; keep even that one private.
    proc = procs.start("nginx", ["/usr/sbin/nginx", "-e", f"{base}/error.log", "-p", base, "-c", conf,
                                 "-g", "daemon off;"])
    wait_listening(procs, proc, [port])
    return proc, payload


def start_echo(procs, port):
    """The plaintext service of the telnets line: whatever line the client sends comes straight back."""
    proc = procs.start("echo", ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", "EXEC:cat"])
    wait_listening(procs, proc, [port])
    return proc
