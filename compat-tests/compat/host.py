"""Puts the documented installation at the documented paths: binary, sslwrap user, certificate, -exec wrapper.

It runs only inside the private mount namespace of compat-tests/in-namespace, where /usr/local and /etc are overlays
whose upper layers live on that namespace's tmpfs: what it writes there, and what it replaces (a live installation's
files, seen through the overlay), changes nothing on the host and vanishes with the namespace. So nothing is backed up
or restored. It must never run outside that namespace; suite.py checks the namespace (compat/isolation.py) first.
"""

import os
import pwd
import shutil
import subprocess

from . import lines
from .report import CheckFailed

MARKER = "sslwrap compat-tests"
SERVICE_USER = "sslwrap"
CERT_SUBJECT = f"/O={MARKER}/CN=localhost"


class Installation:
    def __init__(self):
        self.notes = []

    def make_room(self, path):
        """Removes what is at path in this namespace only; the host's file stays where it is, as it was."""
        if os.path.lexists(path):
            os.remove(path)
            self.notes.append(f"{path} exists on the host, which keeps it: replaced inside the private namespace only")

    def install_binary(self, built_binary):
        """What `make install` puts at /usr/local/sbin/sslwrap: the freshly built binary, mode 755."""
        os.makedirs(os.path.dirname(lines.SSLWRAP), 0o755, exist_ok=True)
        self.make_room(lines.SSLWRAP)
        subprocess.run(["install", "-m", "755", built_binary, lines.SSLWRAP], check=True, timeout=60)

    def ensure_service_user(self):
        """The no-login user the documentation runs sslwrap as, created if missing (useradd writes the private /etc)."""
        try:
            pwd.getpwnam(SERVICE_USER)
            return
        except KeyError:
            pass
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
                       check=True, timeout=60)
        self.notes.append(f"created system user {SERVICE_USER} inside the private namespace only")

    def make_certificate(self):
        """The documented recipe, run in /usr/local/ssl/certs: one PEM with cert and key, its hash link, mode 600."""
        os.makedirs(lines.CERT_DIR, 0o755, exist_ok=True)
        self.make_room(lines.CERT)
        shell(f"cd {lines.CERT_DIR} && "
              f"openssl req -new -x509 -nodes -out server.pem -keyout server.pem -days 365 -subj '{CERT_SUBJECT}'")
        link = os.path.join(lines.CERT_DIR, shell(f"openssl x509 -noout -hash < {lines.CERT}").strip() + ".0")
        self.make_room(link)
        shell(f"cd {lines.CERT_DIR} && ln -s server.pem `openssl x509 -noout -hash < server.pem`.0")
        # The documentation: chmod 600, and make sure the sslwrap user can read it (so it owns it).
        os.chmod(lines.CERT, 0o600)
        shutil.chown(lines.CERT, SERVICE_USER)
        return link

    def install_exec_wrapper(self, script_text):
        """The no-argument program for the -exec line, at the documented path /usr/local/sbin/imapd."""
        os.makedirs(os.path.dirname(lines.IMAPD_WRAPPER), 0o755, exist_ok=True)
        self.make_room(lines.IMAPD_WRAPPER)
        with open(lines.IMAPD_WRAPPER, "w", encoding="utf-8") as wrapper:
            wrapper.write(script_text)
        os.chmod(lines.IMAPD_WRAPPER, 0o755)
        return lines.IMAPD_WRAPPER


def shell(command):
    done = subprocess.run(["bash", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    if done.returncode != 0:
        raise CheckFailed(f"`{command}` failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode()
