"""Puts the documented installation on the host (binary, user, certificate, -exec wrapper) and takes it back off.

Anything already at one of those paths is moved aside into the run's temporary directory and put back at the end; what
the suite created is removed. Files left by an earlier run that was killed are recognised by MARKER and replaced.
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


class HostChanges:
    def __init__(self, backup_dir):
        self.backup_dir = backup_dir
        self.undo = []  # callables, run in reverse order
        self.notes = []

    # -- primitives ---------------------------------------------------------------------------------------------------

    def claim_path(self, path, ours_already=lambda path: False):
        """Makes room at path: an existing foreign file is moved aside (and later put back), a stale one of ours removed."""
        if os.path.lexists(path):
            if ours_already(path):
                os.remove(path)
            else:
                saved = os.path.join(self.backup_dir, path.strip("/").replace("/", "__"))
                shutil.move(path, saved)
                self.undo.append(lambda: restore_saved(saved, path))
                return
        self.undo.append(lambda: remove_if_present(path))

    def make_dirs(self, path):
        missing = []
        while not os.path.isdir(path):
            missing.append(path)
            path = os.path.dirname(path)
        for directory in reversed(missing):
            os.mkdir(directory, 0o755)
            self.undo.append(lambda directory=directory: remove_dir_if_empty(directory))

    def restore(self):
        problems = []
        while self.undo:
            step = self.undo.pop()
            try:
                step()
            except OSError as error:
                problems.append(str(error))
        return problems

    # -- the documented installation ---------------------------------------------------------------------------------

    def install_binary(self, built_binary):
        """What `make install` puts at /usr/local/sbin/sslwrap: the freshly built binary, mode 755."""
        self.make_dirs(os.path.dirname(lines.SSLWRAP))
        self.claim_path(lines.SSLWRAP)
        subprocess.run(["install", "-m", "755", built_binary, lines.SSLWRAP], check=True, timeout=60)

    def ensure_service_user(self):
        """The no-login user the documentation runs sslwrap as; created only if missing, and then removed at the end."""
        try:
            pwd.getpwnam(SERVICE_USER)
            return
        except KeyError:
            pass
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
                       check=True, timeout=60)
        self.undo.append(lambda: subprocess.run(["userdel", SERVICE_USER], check=False, timeout=60))
        self.notes.append(f"created system user {SERVICE_USER} (removed again at the end)")

    def make_certificate(self):
        """The documented recipe, run in /usr/local/ssl/certs: one PEM with cert and key, its hash link, mode 600."""
        self.make_dirs(lines.CERT_DIR)
        self.claim_path(lines.CERT, ours_already=cert_is_ours)
        shell(f"cd {lines.CERT_DIR} && "
              f"openssl req -new -x509 -nodes -out server.pem -keyout server.pem -days 365 -subj '{CERT_SUBJECT}'")
        link = os.path.join(lines.CERT_DIR, shell(f"openssl x509 -noout -hash < {lines.CERT}").strip() + ".0")
        # The link's name is the hash of our own subject, so a symlink to server.pem there was left by an earlier run.
        self.claim_path(link, ours_already=lambda path: os.path.islink(path) and os.readlink(path) == "server.pem")
        shell(f"cd {lines.CERT_DIR} && ln -s server.pem `openssl x509 -noout -hash < server.pem`.0")
        # The documentation: chmod 600, and make sure the sslwrap user can read it (so it owns it).
        os.chmod(lines.CERT, 0o600)
        shutil.chown(lines.CERT, SERVICE_USER)
        return link

    def install_exec_wrapper(self, script_text, fallback_path):
        """The no-argument program for the -exec line, at the documented path unless a real imapd already lives there."""
        path = lines.IMAPD_WRAPPER
        if os.path.lexists(path) and not file_has_marker(path):
            self.notes.append(f"{path} exists and is not ours: the -exec line points to {fallback_path} instead")
            path = fallback_path
        else:
            self.make_dirs(os.path.dirname(path))
            self.claim_path(path, ours_already=file_has_marker)
        with open(path, "w", encoding="utf-8") as wrapper:
            wrapper.write(script_text)
        os.chmod(path, 0o755)
        return path


def shell(command):
    done = subprocess.run(["bash", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    if done.returncode != 0:
        raise CheckFailed(f"`{command}` failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode()


def cert_is_ours(path):
    done = subprocess.run(["openssl", "x509", "-noout", "-subject", "-in", path], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, timeout=30)
    return MARKER in done.stdout.decode(errors="replace")


def file_has_marker(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as text:
            return MARKER in text.read(4096)
    except OSError:
        return False


def restore_saved(saved, path):
    remove_if_present(path)
    shutil.move(saved, path)


def remove_if_present(path):
    if os.path.lexists(path):
        os.remove(path)


def remove_dir_if_empty(path):
    try:
        os.rmdir(path)
    except OSError:
        pass  # someone else put something there meanwhile: it stays
