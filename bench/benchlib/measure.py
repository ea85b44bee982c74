"""The measurements. Every phase starts the programs it compares in front of the same backends and alternates
them run by run (A B C, then C B A, ...), so slow drift of a shared machine falls on all of them alike; the
report takes medians. Each run's CPU figures come from /proc deltas of the program's whole process tree."""

import json
import math
import os
import select
import subprocess
import time

from . import procs
from .metrics import CELLS, cpu_handshake_key, handshake_key, resumed_key
from .procs import BenchError
from .setup import CertificateDirectory

GIB = 1024 ** 3


class Settings:
    """Sizes and repetitions of one kind of run (full, quick or smoke)."""

    def __init__(self, mode, runs, handshake_seconds, clients, bulk_mib, rtt_count, idle_connections,
                 memory_runs, inetd_connections, many_idle_connections, many_idle_seconds, certdir_names):
        self.mode = mode
        self.runs = runs
        self.handshake_seconds = handshake_seconds
        self.clients = clients
        self.bulk_mib = bulk_mib
        self.rtt_count = rtt_count
        self.idle_connections = idle_connections
        self.memory_runs = memory_runs
        self.inetd_connections = inetd_connections
        self.many_idle_connections = many_idle_connections
        self.many_idle_seconds = many_idle_seconds
        self.certdir_names = certdir_names

    def as_dict(self):
        return dict(vars(self))


SETTINGS = {
    "full": Settings("full", runs=5, handshake_seconds=4.0, clients=8, bulk_mib=512, rtt_count=20000,
                     idle_connections=200, memory_runs=3, inetd_connections=200, many_idle_connections=2000,
                     many_idle_seconds=60, certdir_names=1000),
    "quick": Settings("quick", runs=3, handshake_seconds=1.5, clients=8, bulk_mib=64, rtt_count=3000,
                      idle_connections=200, memory_runs=1, inetd_connections=30, many_idle_connections=500,
                      many_idle_seconds=5, certdir_names=1000),
    # 30 inetd connections, not fewer: their CPU (some 2 ms each) is counted in 10 ms clock ticks, and a handful of
    # connections could round to no tick at all, which the smoke test takes for a broken measurement.
    "smoke": Settings("smoke", runs=1, handshake_seconds=0.5, clients=4, bulk_mib=32, rtt_count=300,
                      idle_connections=20, memory_runs=1, inetd_connections=30, many_idle_connections=40,
                      many_idle_seconds=0, certdir_names=20),
}


def alternating(kinds, runs):
    """(run, kind) pairs, the order reversed every other run: A B C C B A A B C ..."""
    for run in range(runs):
        for kind in (kinds if run % 2 == 0 else list(reversed(kinds))):
            yield run, kind


def sane(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


class Bench:
    """What every measurement needs: the settings, the launcher, the load client and the backends' ports."""

    def __init__(self, settings, launcher, loadgen, backends, kinds, store, workdir):
        self.settings = settings
        self.launcher = launcher
        self.loadgen_bin = loadgen
        self.backends = backends
        self.kinds = kinds
        self.store = store
        self.workdir = workdir

    def loadgen(self, subcommand, options, timeout):
        """Runs one load-client command and returns its JSON result."""
        argv = [self.loadgen_bin, subcommand] + [str(word) for word in options]
        output = procs.run(argv, timeout=timeout)
        lines = [line for line in output.splitlines() if line.strip()]
        if not lines:
            raise BenchError(f"loadgen {subcommand} printed no result")
        return json.loads(lines[-1])

    def attempt(self, what, measurement):
        """Runs one measurement; a failure is recorded and the benchmark goes on with the next run."""
        try:
            measurement()
        except BenchError as error:
            self.store.fail(what, str(error))

    def start_all(self, kinds, backend, cert="ECDSA"):
        return {kind: self.launcher.daemon(kind, self.backends[backend], cert) for kind in kinds}


def stop_all(endpoints):
    for endpoint in endpoints.values():
        endpoint.stop()


class Usage:
    """CPU used by one endpoint's process tree, and the machine's utilisation, over one run."""

    def __init__(self, endpoint):
        self.endpoint = endpoint
        endpoint.settle()
        self.cpu = endpoint.cpu_seconds()
        self.machine = procs.machine_cpu_times()

    def finish(self):
        """Returns (CPU seconds of the tree, fraction of the machine busy) since construction."""
        self.endpoint.settle()
        busy, total = procs.machine_cpu_times()
        busy_fraction = (busy - self.machine[0]) / max(1, total - self.machine[1])
        return self.endpoint.cpu_seconds() - self.cpu, busy_fraction


# --- 1 and 6: handshakes per second and CPU per handshake ------------------------------------------------------

def handshake_run(bench, endpoint, tls, cert):
    settings = bench.settings
    usage = Usage(endpoint)
    counters = procs.own_counters(endpoint.process.pid) if endpoint.kind == "sslwrap" else None
    result = bench.loadgen("handshakes", [
        "--connect", endpoint.address, "--clients", settings.clients, "--seconds", settings.handshake_seconds,
        "--tls", tls], timeout=settings.handshake_seconds + 120)
    cpu, busy = usage.finish()
    done = result["handshakes"]
    if done == 0 or result["errors"]:
        raise BenchError(f"{done} handshakes, {result['errors']} errors: {result['first_error']}")
    bench.store.add(handshake_key(tls, cert), endpoint.kind, result["per_second"])
    bench.store.add(cpu_handshake_key(tls, cert), endpoint.kind, cpu / done * 1e3)
    if counters:
        note_fork_price(bench, endpoint, counters, done, tls, cert)
    bench.store.note(f"client_cpu_per_handshake_ms_{cert.lower()}", result["client_cpu_s"] / done * 1e3)
    bench.store.note("machine_busy_during_handshakes", busy)


def note_fork_price(bench, endpoint, before, connections, tls, cert):
    """The price of a process per connection, from the daemon's /proc counters over one handshake run (issue 17):
    the parent's own CPU per connection (accept, fork, reap; nothing of TLS happens there), and per session process
    the minor page faults (copy-on-write of the parent's pages and first touches) and the system CPU it used (exit,
    those faults, and its handshake's and relay's system calls)."""
    after = procs.own_counters(endpoint.process.pid)
    per_connection = {key: (after[key] - before[key]) / connections for key in after}
    cell = f"tls{tls.replace('.', '')}_{cert.lower()}"
    bench.store.add(f"fork_parent_us_{cell}", "sslwrap", per_connection["own_cpu_s"] * 1e6)
    bench.store.add(f"fork_child_faults_{cell}", "sslwrap", per_connection["children_minor_faults"])
    bench.store.add(f"fork_child_system_us_{cell}", "sslwrap", per_connection["children_system_s"] * 1e6)


# --- 3: round-trip latency --------------------------------------------------------------------------------------

def latency_run(bench, endpoint):
    result = bench.loadgen("latency", ["--connect", endpoint.address, "--count", bench.settings.rtt_count],
                           timeout=120)
    bench.store.add("rtt_median_us", endpoint.kind, result["median_us"])
    bench.store.add("rtt_p99_us", endpoint.kind, result["p99_us"])


def handshake_and_latency_phase(bench):
    """Handshake cells for both certificates; the latency runs reuse the ECDSA echo daemons."""
    for cert in ("ECDSA", "RSA"):
        endpoints = bench.start_all(bench.kinds, "echo", cert)
        try:
            for tls in [t for t, c in CELLS if c == cert]:
                for run, kind in alternating(bench.kinds, bench.settings.runs):
                    bench.attempt(f"handshakes TLS {tls} {cert} {kind} run {run + 1}",
                                  lambda: handshake_run(bench, endpoints[kind], tls, cert))
            if cert == "ECDSA":
                for run, kind in alternating(bench.kinds, bench.settings.runs):
                    bench.attempt(f"latency {kind} run {run + 1}", lambda: latency_run(bench, endpoints[kind]))
        finally:
            stop_all(endpoints)


# --- 2 and 6: bulk throughput and CPU per GiB -------------------------------------------------------------------

def bulk_run(bench, endpoint, direction):
    plain = ["--plain"] if endpoint.kind == "socat" else []
    usage = Usage(endpoint)
    result = bench.loadgen(direction, ["--connect", endpoint.address, "--mib", bench.settings.bulk_mib] + plain,
                           timeout=300)
    cpu, _ = usage.finish()
    if not result["intact"]:
        raise BenchError(f"{direction}: the data arrived altered (byte-for-byte check against the pattern)")
    bench.store.add(f"{direction}_mib_s", endpoint.kind, result["mib_per_s"])
    bench.store.add(f"cpu_per_gib_{direction}", endpoint.kind, cpu / (result["bytes"] / GIB))
    if endpoint.kind != "socat":
        bench.store.note(f"client_cpu_per_gib_{direction}", result["client_cpu_s"] / (result["bytes"] / GIB))
        bench.store.note("session", result["session"])


def throughput_phase(bench):
    """Each program, and socat as the plain relay ceiling, in front of the sink and of the source."""
    kinds = bench.kinds + ["socat"]
    for direction, backend in (("upload", "sink"), ("download", "source")):
        endpoints = bench.start_all(kinds, backend)
        try:
            for run, kind in alternating(kinds, bench.settings.runs):
                bench.attempt(f"{direction} {kind} run {run + 1}",
                              lambda: bulk_run(bench, endpoints[kind], direction))
        finally:
            stop_all(endpoints)


# --- 4: memory with idle connections -----------------------------------------------------------------------------

def _read_line(pipe, limit):
    """One line from a child's stdout, waiting at most limit seconds."""
    deadline = time.monotonic() + limit
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([pipe], [], [], left)[0]:
            raise BenchError(f"no answer within {limit:.0f} s")
        chunk = os.read(pipe.fileno(), 4096)
        if not chunk:
            raise BenchError("exited before answering")
        line += chunk
    return line.decode()


def _hold_idle(bench, endpoint, count, hold_seconds):
    """Starts `count` idle connections to endpoint (plain TCP for socat) and returns the load client holding them."""
    argv = [bench.loadgen_bin, "idle", "--connect", endpoint.address, "--count", str(count),
            "--hold-seconds", str(hold_seconds)]
    if endpoint.kind == "socat":
        argv.append("--plain")
    idle = procs.start(argv, os.path.join(bench.workdir, "idle.log"), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    ready = json.loads(_read_line(idle.stdout, 60 + count / 20))
    if ready.get("ready") != count:
        procs.stop(idle, grace=10)
        raise BenchError(f"only {ready.get('ready')} of {count} idle connections opened")
    return idle


def _release_idle(idle):
    idle.stdin.close()
    procs.stop(idle, grace=30)


def _a_session_child(pid):
    """The session process in the middle of the list (the first and last ones can differ in what they share)."""
    children = procs.descendants(pid)
    return children[len(children) // 2] if children else None


def memory_run(bench, kind):
    count = bench.settings.idle_connections
    endpoint = bench.launcher.daemon(kind, bench.backends["echo"])
    idle = None
    try:
        endpoint.settle()
        time.sleep(0.2)
        baseline = procs.tree_memory_kib(endpoint.process.pid)
        idle = _hold_idle(bench, endpoint, count, 120)
        time.sleep(2.0)  # let every session reach its steady idle state (sslwrap gives buffers back after 1 s)
        loaded = procs.tree_memory_kib(endpoint.process.pid)
        child = _a_session_child(endpoint.process.pid) if kind in FORKING else None
        by_mapping = procs.private_dirty_by_mapping_kib(child) if child else None
    finally:
        if idle is not None:
            _release_idle(idle)
        endpoint.stop()
    bench.store.add("pss_per_connection_kib", kind, loaded["Pss"] / count)
    bench.store.add("pss_marginal_kib", kind, (loaded["Pss"] - baseline["Pss"]) / count)
    bench.store.add("private_dirty_marginal_kib", kind, (loaded["Private_Dirty"] - baseline["Private_Dirty"]) / count)
    if by_mapping:
        for mapping, kib in by_mapping.items():
            bench.store.add(f"child_private_dirty_{mapping}_kib", kind, kib)
    bench.store.note(f"memory_{kind}", {"idle": baseline, "loaded": loaded, "connections": count,
                                        "session_child_private_dirty_kib": by_mapping})


# The programs that fork one process per connection; socat is the floor of what that costs.
FORKING = ("sslwrap", "socat")


def memory_phase(bench):
    """One program at a time, started fresh, so no other instance shares (and so discounts) its pages; socat (a
    plain relay forking per connection, no TLS) beside them as the floor of a process per connection."""
    for run, kind in alternating(bench.kinds + ["socat"], bench.settings.memory_runs):
        bench.attempt(f"memory {kind} run {run + 1}", lambda: memory_run(bench, kind))


def many_idle_run(bench):
    """One sslwrap daemon (-maxconn N) holding N idle TLS connections: the total memory, and after the idle time
    every session must still echo a byte."""
    count, seconds = bench.settings.many_idle_connections, bench.settings.many_idle_seconds
    endpoint = bench.launcher.daemon("sslwrap", bench.backends["echo"], extra=["-maxconn", str(count)])
    idle = None
    try:
        idle = _hold_idle(bench, endpoint, count, seconds + 600)
        time.sleep(max(seconds, 2.0))
        loaded = procs.tree_memory_kib(endpoint.process.pid)
        idle.stdin.write(b"probe\n")
        idle.stdin.flush()
        probe = json.loads(_read_line(idle.stdout, 60 + count / 20))
    finally:
        if idle is not None:
            _release_idle(idle)
        endpoint.stop()
    if probe.get("answered") != count:
        raise BenchError(f"{probe.get('answered')} of {count} idle sessions answered after {seconds} s: "
                         f"{probe.get('first_error')}")
    if loaded["processes"] < count + 1:
        raise BenchError(f"{loaded['processes']} processes for {count} sessions")
    bench.store.add("many_idle_total_pss_mib", "sslwrap", loaded["Pss"] / 1024)
    bench.store.add("many_idle_pss_per_connection_kib", "sslwrap", loaded["Pss"] / count)
    bench.store.note("many_idle", {"connections": count, "idle_seconds": seconds, "loaded": loaded,
                                   "answered": probe.get("answered")})


def many_idle_phase(bench):
    if "sslwrap" in bench.kinds:
        bench.attempt("many idle sslwrap", lambda: many_idle_run(bench))


# --- 5: inetd mode under tcpserver ---------------------------------------------------------------------------------

def inetd_run(bench, endpoint):
    count = bench.settings.inetd_connections
    usage = Usage(endpoint)
    result = bench.loadgen("handshakes", ["--connect", endpoint.address, "--clients", 1, "--count", count,
                                          "--seconds", 300], timeout=400)
    cpu, _ = usage.finish()
    if result["handshakes"] != count or result["errors"]:
        raise BenchError(f"{result['handshakes']} of {count} connections, {result['errors']} errors: "
                         f"{result['first_error']}")
    bench.store.add("inetd_wall_ms", endpoint.kind, result["median_ms"])
    bench.store.add("inetd_cpu_ms", endpoint.kind, cpu / count * 1e3)


def inetd_phase(bench):
    kinds = [kind for kind in bench.kinds if kind in ("sslwrap", "stunnel")]
    endpoints = {kind: bench.launcher.inetd(kind, bench.backends["echo"]) for kind in kinds}
    try:
        for run, kind in alternating(kinds, bench.settings.runs):
            bench.attempt(f"inetd {kind} run {run + 1}", lambda: inetd_run(bench, endpoints[kind]))
    finally:
        stop_all(endpoints)


# --- issue 15: resumed handshakes with shared ticket keys, daemon and inetd mode ---------------------------------

# The programs with a way to share session-ticket keys between processes (hitch has none).
SHARED_TICKETS = ("sslwrap", "stunnel")


def resumed_run(bench, endpoint, tls, cert):
    """Resumed handshakes per second: loadgen's --resume counts a connection only if the server resumed it."""
    settings = bench.settings
    result = bench.loadgen("handshakes", [
        "--connect", endpoint.address, "--clients", settings.clients, "--seconds", settings.handshake_seconds,
        "--tls", tls, "--resume"], timeout=settings.handshake_seconds + 120)
    if result["handshakes"] == 0 or result["errors"]:
        raise BenchError(f"{result['handshakes']} resumed, {result['errors']} errors: {result['first_error']}")
    bench.store.add(resumed_key(tls, cert), endpoint.kind, result["per_second"])


def resumed_daemon_phase(bench):
    kinds = [kind for kind in bench.kinds if kind in SHARED_TICKETS]
    for cert in ("ECDSA", "RSA"):
        endpoints = {kind: bench.launcher.daemon(kind, bench.backends["echo"], cert, shared_tickets=True)
                     for kind in kinds}
        try:
            for tls in [t for t, c in CELLS if c == cert]:
                for run, kind in alternating(kinds, bench.settings.runs):
                    bench.attempt(f"resumed handshakes TLS {tls} {cert} {kind} run {run + 1}",
                                  lambda: resumed_run(bench, endpoints[kind], tls, cert))
        finally:
            stop_all(endpoints)


def inetd_resumed_run(bench, endpoint):
    """Sequential resumed connections under tcpserver: each one a new process that must open the last ticket."""
    count = bench.settings.inetd_connections
    usage = Usage(endpoint)
    result = bench.loadgen("handshakes", ["--connect", endpoint.address, "--clients", 1, "--count", count,
                                          "--seconds", 300, "--resume"], timeout=400)
    cpu, _ = usage.finish()
    if result["handshakes"] != count or result["errors"]:
        raise BenchError(f"{result['handshakes']} of {count} connections resumed, {result['errors']} errors: "
                         f"{result['first_error']}")
    bench.store.add("inetd_resumed_wall_ms", endpoint.kind, result["median_ms"])
    # The first (full) handshake's process is in the CPU figure too: one in count + 1.
    bench.store.add("inetd_resumed_cpu_ms", endpoint.kind, cpu / (count + 1) * 1e3)


def resumed_inetd_phase(bench):
    kinds = [kind for kind in bench.kinds if kind in SHARED_TICKETS]
    endpoints = {kind: bench.launcher.inetd(kind, bench.backends["echo"], shared_tickets=True) for kind in kinds}
    try:
        for run, kind in alternating(kinds, bench.settings.runs):
            bench.attempt(f"inetd resumed {kind} run {run + 1}", lambda: inetd_resumed_run(bench, endpoints[kind]))
    finally:
        stop_all(endpoints)


def resumed_phase(bench):
    resumed_daemon_phase(bench)
    resumed_inetd_phase(bench)


# --- issue 15: an inetd-mode connection with many names in -certdir ---------------------------------------------

def certdir_run(bench, endpoint, server_name, key):
    """Sequential connections asking for server_name; loadgen checks the certificate that came is made out for it."""
    count = bench.settings.inetd_connections
    result = bench.loadgen("handshakes", ["--connect", endpoint.address, "--clients", 1, "--count", count,
                                          "--seconds", 300, "--servername", server_name], timeout=400)
    if result["handshakes"] != count or result["errors"]:
        raise BenchError(f"{result['handshakes']} of {count} connections, {result['errors']} errors: "
                         f"{result['first_error']}")
    bench.store.add(key, "sslwrap", result["median_ms"])


def certdir_phase(bench):
    """sslwrap under tcpserver with `-cert default -certdir DIR` of many names against `-cert` of the one name the
    client asks for (issue 15: at most 10% more), and against a -certdir holding only that name's file, which tells
    what the number of files adds from what choosing by name costs at all."""
    if "sslwrap" not in bench.kinds:
        return
    names = CertificateDirectory(bench.workdir, bench.settings.certdir_names)
    bench.store.note("certdir_names", bench.settings.certdir_names)
    endpoints = {
        "certdir_inetd_wall_ms": bench.launcher.inetd(
            "sslwrap", bench.backends["echo"], sslwrap_options=["-cert", names.default_pem, "-certdir", names.dir]),
        "certdir_one_file_wall_ms": bench.launcher.inetd(
            "sslwrap", bench.backends["echo"],
            sslwrap_options=["-cert", names.default_pem, "-certdir", names.one_file_dir]),
        "certdir_single_wall_ms": bench.launcher.inetd(
            "sslwrap", bench.backends["echo"], sslwrap_options=["-cert", names.asked_pem]),
    }
    try:
        for run, key in alternating(list(endpoints), bench.settings.runs):
            bench.attempt(f"{key} run {run + 1}", lambda: certdir_run(bench, endpoints[key], names.asked, key))
    finally:
        stop_all(endpoints)


# --- 7: what the seccomp filter costs a connection ---------------------------------------------------------------

# (rounds, seconds per round) of the seccomp cell: the difference sought is about 1 % of a connection's CPU, so many
# short alternating rounds, judged by the median of each round's paired ratio, beat a few long ones.
SECCOMP_ROUNDS = {"full": (21, 1.5), "quick": (9, 1.0), "smoke": (1, 0.5)}


def seccomp_run(bench, endpoint, label, seconds):
    """CPU per connection (TLS 1.3 ECDSA handshake, one echoed byte, close) of one sslwrap daemon, in ms."""
    usage = Usage(endpoint)
    result = bench.loadgen("handshakes", [
        "--connect", endpoint.address, "--clients", bench.settings.clients, "--seconds", seconds,
        "--tls", "1.3"], timeout=seconds + 120)
    cpu, _ = usage.finish()
    done = result["handshakes"]
    if done == 0 or result["errors"]:
        raise BenchError(f"{done} connections, {result['errors']} errors: {result['first_error']}")
    bench.store.add("seccomp_cpu_per_connection_ms", label, cpu / done * 1e3)
    return cpu / done * 1e3


def seccomp_phase(bench):
    """sslwrap as it ships (every session process confined) against sslwrap -noseccomp, same binary, same backend,
    alternating round by round; each pair of neighbouring rounds gives one ratio."""
    if "sslwrap" not in bench.kinds:
        return
    rounds, seconds = SECCOMP_ROUNDS[bench.settings.mode]
    endpoints = {
        "confined": bench.launcher.daemon("sslwrap", bench.backends["echo"]),
        "noseccomp": bench.launcher.daemon("sslwrap", bench.backends["echo"], extra=["-noseccomp"]),
    }
    try:
        for run, label in alternating(["confined", "noseccomp"], rounds):
            bench.attempt(f"seccomp cost {label} run {run + 1}",
                          lambda: seccomp_run(bench, endpoints[label], label, seconds))
    finally:
        stop_all(endpoints)
    samples = bench.store.samples.get("seccomp_cpu_per_connection_ms", {})
    for confined, unconfined in zip(samples.get("confined", []), samples.get("noseccomp", [])):
        bench.store.note("seccomp_paired_ratio", confined / unconfined)


PHASE_NAMES = {"handshakes": handshake_and_latency_phase, "throughput": throughput_phase, "memory": memory_phase,
               "many_idle": many_idle_phase,
               "inetd": inetd_phase, "resumed": resumed_phase, "certdir": certdir_phase,
               "seccomp": seccomp_phase}
PHASES = tuple(PHASE_NAMES.values())


def start_backends(loadgen, workdir, lifetime):
    """The echo, sink and source services; they also end by themselves when the driver goes away."""
    process = procs.start([loadgen, "serve", "--max-seconds", str(int(lifetime))],
                          os.path.join(workdir, "backends.log"), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    ports = json.loads(_read_line(process.stdout, 30))
    return process, ports
