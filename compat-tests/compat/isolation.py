"""Makes sure the suite's installation exists only in its private mount namespace, and shows that the host kept its own.

compat-tests/run describes the host's legacy paths and account files (host-manifest) before entering the namespace, and
stays in the host's mount namespace itself, its pid in SSLWRAP_COMPAT_HOST_PID. Through /proc/PID/root this module sees
those files as the host sees them, and compares them with that description at the start and at the end of the run.
It only reads; it must never write anything through /proc/PID/root.
"""

import os
import subprocess

from . import host, lines
from .report import CheckFailed, fail_unless

HOST_MANIFEST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "host-manifest")
# What compat-tests/in-namespace overlays (PRIVATE_DIRS there); nothing is installed unless each has its own overlay.
PRIVATE_DIRS = ("/usr/local", "/etc")


class HostView:
    def __init__(self, environ):
        pid = environ.get("SSLWRAP_COMPAT_HOST_PID")
        manifest = environ.get("SSLWRAP_COMPAT_HOST_MANIFEST")
        if not pid or not manifest:
            raise CheckFailed("suite.py runs only under compat-tests/run, inside its private mount namespace "
                              "(SSLWRAP_COMPAT_HOST_PID or SSLWRAP_COMPAT_HOST_MANIFEST not set); nothing installed")
        self.pid = pid
        self.root = f"/proc/{pid}/root"
        with open(manifest, encoding="utf-8") as before:
            self.before = before.read()

    def require_private_namespace(self):
        """Refuses (CheckFailed) unless this mount namespace is not the host's and has its own overlays."""
        try:
            host_ns = os.readlink(f"/proc/{self.pid}/ns/mnt")
        except OSError as error:
            raise CheckFailed(f"cannot see the host's mount namespace through /proc/{self.pid}: {error}") from None
        ours = os.readlink("/proc/self/ns/mnt")
        fail_unless(host_ns != ours, f"the suite is in the host's own mount namespace ({ours}); nothing installed")
        # An overlay alone proves nothing (a container's /etc may be one already): it must be a file system other than
        # the one the host sees at the same path.
        shared = [directory for directory in PRIVATE_DIRS
                  if file_system_type(directory) != "overlayfs"
                  or os.stat(directory).st_dev == os.stat(self.root + directory).st_dev]
        fail_unless(not shared, f"{', '.join(shared)} not overlaid in this namespace (the same file system as the "
                                f"host's); nothing installed")

    def unchanged(self):
        """The check: the host's view of the watched paths is still what run described before entering the namespace."""
        now = describe(self.root)
        if now != self.before:
            raise CheckFailed(f"the host's files differ from their state before the run: {changes(self.before, now)}")
        return f"{len(now.splitlines())} entries identical through {self.root}; on the host: {self.facts()}"

    def facts(self):
        """What the host has at the paths the suite installs to, in a few words."""
        said = []
        for path in (lines.SSLWRAP, lines.CERT):
            seen = self.root + path
            said.append(f"{path} {'present' if os.path.lexists(seen) else 'absent'}")
        with open(self.root + "/etc/passwd", encoding="utf-8", errors="replace") as passwd:
            has_user = any(line.split(":", 1)[0] == host.SERVICE_USER for line in passwd)
        said.append(f"user {host.SERVICE_USER} {'present' if has_user else 'absent'}")
        return ", ".join(said)


def changes(before, now):
    """The paths whose description differs, each marked new, gone or changed."""
    old, new = by_path(before), by_path(now)
    marked = []
    for path in sorted(set(old) | set(new)):
        if old.get(path) == new.get(path):
            continue
        if old.get(path, ["absent"]) == ["absent"]:
            marked.append(f"{path} (new)")
        elif new.get(path, ["absent"]) == ["absent"]:
            marked.append(f"{path} (gone)")
        else:
            marked.append(f"{path} (changed)")
    return ", ".join(marked[:8]) + (f" and {len(marked) - 8} more" if len(marked) > 8 else "")


def by_path(description):
    entries = {}
    for line in description.splitlines():
        path, _, rest = line.partition(" ")
        entries.setdefault(path, []).append(rest)
    return entries


def describe(root):
    done = subprocess.run([HOST_MANIFEST, root], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    if done.returncode != 0:
        raise CheckFailed(f"host-manifest {root} failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode(errors="replace")


def file_system_type(path):
    """What a lookup of path finds (statfs of the topmost mount there), named as by `stat -f`: overlayfs, tmpfs..."""
    done = subprocess.run(["stat", "-f", "-c", "%T", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
    return done.stdout.decode(errors="replace").strip() if done.returncode == 0 else "unknown"
