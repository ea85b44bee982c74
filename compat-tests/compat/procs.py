"""Starts and stops the suite's own processes, and waits (always bounded) for them to listen.

Every process is started in a new session, so its process group id is its own pid: stopping it by that id also stops
the sessions it spawned (inetd's sslwrap children, dovecot's workers) and nothing that the suite did not start.
"""

import os
import signal
import subprocess
import time

from .report import CheckFailed

START_TIMEOUT = 15


class ProcessSet:
    def __init__(self, log_dir, env):
        self.log_dir = log_dir
        self.env = env
        self.running = []

    def start(self, name, argv, cwd=None):
        log = open(os.path.join(self.log_dir, f"{name}.log"), "ab")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=cwd, env=self.env, start_new_session=True)
        log.close()
        proc.compat_name = name
        self.running.append(proc)
        return proc

    def log_tail(self, proc, lines=3):
        path = os.path.join(self.log_dir, f"{proc.compat_name}.log")
        try:
            with open(path, encoding="utf-8", errors="replace") as log:
                return " | ".join(line.strip() for line in log.readlines()[-lines:] if line.strip())
        except OSError:
            return ""

    def stop(self, proc, grace=5):
        """SIGTERM to the process group we created, then SIGKILL after a bounded grace period."""
        if proc not in self.running:
            return
        self.running.remove(proc)
        signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and group_alive(proc.pid):
            proc.poll()
            time.sleep(0.05)
        if group_alive(proc.pid):
            signal_group(proc.pid, signal.SIGKILL)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass

    def stop_all(self):
        for proc in reversed(list(self.running)):
            self.stop(proc)


def signal_group(pgid, signum):
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # A zombie leader still counts for killpg; it is gone for our purposes once no live member is left.
    return any(member_is_live(pid, pgid) for pid in pids_in_group(pgid))


def pids_in_group(pgid):
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                yield int(entry)


def member_is_live(pid, pgid):
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def listening_ports():
    """TCP ports in LISTEN state in this network namespace, read from /proc (no connection, so no stray session)."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as rows:
                next(rows)
                for row in rows:
                    fields = row.split()
                    if fields[3] == "0A":
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except FileNotFoundError:
            continue
    return ports


def wait_listening(procs, proc, ports, timeout=START_TIMEOUT, launcher_exits=False):
    """Waits until every port listens; fails early, with the process's own words, if the process died.

    launcher_exits: the process is a script that starts daemons and returns; only a failure status counts then.
    """
    deadline = time.monotonic() + timeout
    while True:
        missing = set(ports) - listening_ports()
        if not missing:
            return
        if proc.poll() is not None and not (launcher_exits and proc.returncode == 0):
            raise CheckFailed(f"{proc.compat_name} exited with status {proc.returncode} before listening on "
                              f"{sorted(missing)}: {procs.log_tail(proc)}")
        if time.monotonic() > deadline:
            raise CheckFailed(f"{proc.compat_name} did not listen on {sorted(missing)} within {timeout}s: "
                              f"{procs.log_tail(proc)}")
        time.sleep(0.05)


def wait_closed(ports, timeout=START_TIMEOUT):
    """Waits until no one listens on the ports any more, so the next superserver can bind them."""
    deadline = time.monotonic() + timeout
    while set(ports) & listening_ports():
        if time.monotonic() > deadline:
            raise CheckFailed(f"ports {sorted(set(ports) & listening_ports())} still listening after {timeout}s")
        time.sleep(0.05)


def run(argv, timeout, input_bytes=b"", env=None, cwd=None):
    """Runs a short command to completion with a hard time limit; returns (status, combined output)."""
    try:
        done = subprocess.run(argv, input=input_bytes, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=timeout, env=env, cwd=cwd, start_new_session=True)
    except subprocess.TimeoutExpired as expired:
        raise CheckFailed(f"{argv[0]} did not finish within {timeout}s; it printed: "
                          f"{tail_text(expired.output or b'')}") from None
    return done.returncode, done.stdout


def tail_text(data, limit=300):
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = " ".join(text.split())
    return text[-limit:]
