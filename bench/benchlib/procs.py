"""Every process the benchmark starts, and what /proc says about it.

Processes are tracked by PID and stopped by PID, their descendants included, when a measurement ends or when the
driver exits for any reason (normal end, exception, SIGINT/SIGTERM/SIGHUP; PR_SET_PDEATHSIG covers SIGKILL).
Nothing is ever stopped by name. Every wait has a deadline.
"""

import atexit
import ctypes
import os
import random
import resource
import signal
import socket
import subprocess
import time

CLOCK_TICK = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)
_running = []
_ports_handed_out = set()


class BenchError(Exception):
    """A measurement could not be made; the message says which and why."""


def _die_with_driver():
    # Runs in the child between fork and exec: should the driver be killed outright, the kernel stops the child.
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def start(argv, log_path, stdin=subprocess.DEVNULL, stdout=None):
    """Starts a long-running process; stderr (and stdout unless given) go to log_path."""
    with open(log_path, "ab") as log:
        try:
            process = subprocess.Popen(
                argv, stdin=stdin, stdout=stdout if stdout is not None else log, stderr=log,
                preexec_fn=_die_with_driver)
        except OSError as error:
            raise BenchError(f"cannot start {argv[0]}: {error}") from error
    _running.append(process)
    return process


def run(argv, timeout, log_path=None):
    """Runs a command to completion within timeout seconds; returns its stdout as text."""
    stderr = open(log_path, "ab") if log_path else subprocess.PIPE
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                              timeout=timeout, preexec_fn=_die_with_driver, check=False)
    except subprocess.TimeoutExpired as error:
        raise BenchError(f"{os.path.basename(argv[0])} took longer than {timeout:.0f} s") from error
    finally:
        if log_path:
            stderr.close()
    if done.returncode != 0:
        detail = (done.stderr or b"").decode(errors="replace").strip() if not log_path else f"see {log_path}"
        raise BenchError(f"{' '.join(argv[:2])} failed (status {done.returncode}): {detail}")
    return done.stdout.decode(errors="replace")


def _send(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid):
    """True while pid exists and is not a zombie (a zombie holds no resources worth waiting for)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return _stat_fields(stat.read())[0] != "Z"
    except OSError:
        return False


def stop(process, grace=3.0):
    """Stops a started process and every descendant: SIGTERM by PID, SIGKILL after grace seconds."""
    if process not in _running:
        return
    _running.remove(process)
    pids = [process.pid] + descendants(process.pid)
    for pid in pids:
        _send(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        _send(process.pid, signal.SIGKILL)
        process.wait(timeout=grace)
    for pid in pids[1:]:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _alive(pid):
            _send(pid, signal.SIGKILL)


def stop_all():
    """Stops everything still running, newest first (wrappers before the backends they use)."""
    for process in reversed(list(_running)):
        try:
            stop(process)
        except (OSError, subprocess.TimeoutExpired):
            pass


def _exit_on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def install_cleanup():
    """Makes sure stop_all runs however the driver ends."""
    atexit.register(stop_all)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)


def _stat_fields(raw):
    # The command name (field 2) may contain spaces and parentheses: split after its closing parenthesis.
    return raw[raw.rindex(b")") + 2:].decode().split()


def parent_of_each_process():
    """Maps each PID on the machine to its parent PID (this kernel has no /proc/PID/task/TID/children)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                parents[int(entry)] = int(_stat_fields(stat.read())[1])
        except (OSError, ValueError):
            continue
    return parents


def descendants(pid):
    """Every live descendant of pid, children before grandchildren."""
    children = {}
    for child, parent in parent_of_each_process().items():
        children.setdefault(parent, []).append(child)
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def tree_cpu_seconds(pid):
    """User + system CPU of pid and its live descendants, plus what their reaped children used.

    A child that exits between two readings moves its time into its parent's cutime/cstime, so the difference
    of two readings is the CPU the whole tree used in between, however many children came and went.
    """
    ticks = 0
    for member in [pid] + descendants(pid):
        try:
            with open(f"/proc/{member}/stat", "rb") as stat:
                fields = _stat_fields(stat.read())
        except OSError:
            continue
        ticks += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return ticks / CLOCK_TICK


def own_counters(pid):
    """The process's own CPU seconds (utime + stime, not its children's), and its reaped children's minor page
    faults, user and system CPU seconds (cminflt, cutime, cstime): what a fork-per-connection parent and the session
    processes it reaped used, apart."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = _stat_fields(stat.read())
    return {
        "own_cpu_s": (int(fields[11]) + int(fields[12])) / CLOCK_TICK,
        "children_minor_faults": int(fields[8]),
        "children_user_s": int(fields[13]) / CLOCK_TICK,
        "children_system_s": int(fields[14]) / CLOCK_TICK,
    }


def thread_count(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory_kib(pid):
    """Summed smaps_rollup figures (kB) over pid and its descendants, and how many processes that was."""
    totals = {"Pss": 0, "Rss": 0, "Private_Dirty": 0, "Private_Clean": 0}
    members = [pid] + descendants(pid)
    for member in members:
        try:
            with open(f"/proc/{member}/smaps_rollup") as rollup:
                for line in rollup:
                    name, _, rest = line.partition(":")
                    if name in totals:
                        totals[name] += int(rest.split()[0])
        except (OSError, ValueError, IndexError):
            continue
    totals["processes"] = len(members)
    return totals


def private_dirty_by_mapping_kib(pid):
    """One process's Private_Dirty (kB) by kind of mapping: heap, stack, anon (other anonymous memory, such as
    allocator arenas and thread stacks) and libraries (every file-backed mapping, the program's own included)."""
    totals = {"heap": 0, "stack": 0, "anon": 0, "libraries": 0}
    kind = "anon"
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if fields and "-" in fields[0] and not fields[0].endswith(":"):
                name = fields[5] if len(fields) > 5 else ""
                kind = ("heap" if name == "[heap]" else "stack" if name == "[stack]"
                        else "libraries" if name.startswith("/") else "anon")
            elif fields and fields[0] == "Private_Dirty:":
                totals[kind] += int(fields[1])
    return totals


def raise_descriptor_limit(wanted):
    """Raises this process's soft RLIMIT_NOFILE (inherited by everything it starts) to `wanted`, or the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def machine_cpu_times():
    """(busy, total) jiffies of the whole machine, for the utilisation during a run."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def load_average():
    """The machine's 1-minute load average."""
    with open("/proc/loadavg") as loadavg:
        return float(loadavg.read().split()[0])


def settle(pid, children, threads, limit=5.0):
    """Waits until pid is back to its idle number of children and threads (the sessions of the last run have
    ended and been reaped), so a CPU reading taken next includes all of them."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if len(descendants(pid)) <= children and thread_count(pid) <= threads:
            return
        time.sleep(0.05)


def free_port():
    """A loopback TCP port nothing listens on, below the ephemeral range so client connections never take it."""
    for _ in range(200):
        port = random.randrange(20000, 32000)
        if port in _ports_handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _ports_handed_out.add(port)
        return port
    raise BenchError("no free loopback port found")


def _listening(port):
    wanted = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp") as table:
            next(table)
            return any(line.split()[1] == wanted and line.split()[3] == "0A" for line in table)
    except OSError:
        return False


def wait_listening(process, port, what, log_path, limit=15.0):
    """Waits until 127.0.0.1:port is in LISTEN state, without connecting (a probe would count as a client)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if _listening(port):
            return
        if process.poll() is not None:
            raise BenchError(f"{what} exited with status {process.returncode} at start-up: {log_tail(log_path)}")
        time.sleep(0.02)
    raise BenchError(f"{what} did not listen on port {port} within {limit:.0f} s: {log_tail(log_path)}")


def log_tail(path, lines=3):
    try:
        with open(path, errors="replace") as log:
            return " | ".join(line.strip() for line in log.readlines()[-lines:]) or "(no output)"
    except OSError:
        return "(no log)"
