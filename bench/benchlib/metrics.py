"""The catalogue of measured quantities (name, unit, which direction is better) and the store the measurements go
into. Measuring (measure.py) and reporting (report.py) share it, so a metric is described in one place."""

import statistics

CELLS = [("1.3", "ECDSA"), ("1.2", "ECDSA"), ("1.3", "RSA"), ("1.2", "RSA")]
# How a session process's private memory splits (procs.private_dirty_by_mapping_kib).
CHILD_MAPPINGS = ("heap", "stack", "anon", "libraries")


class Metric:
    def __init__(self, key, label, unit, higher_is_better):
        self.key = key
        self.label = label
        self.unit = unit
        self.higher_is_better = higher_is_better


def handshake_key(tls, cert):
    return f"handshakes_tls{tls.replace('.', '')}_{cert.lower()}"


def cpu_handshake_key(tls, cert):
    return f"cpu_per_handshake_tls{tls.replace('.', '')}_{cert.lower()}"


def resumed_key(tls, cert):
    return f"resumed_tls{tls.replace('.', '')}_{cert.lower()}"


def catalogue():
    """Every metric, in table order."""
    metrics = [Metric(handshake_key(t, c), f"handshakes/s TLS {t} {c}", "1/s", True) for t, c in CELLS]
    metrics += [Metric(cpu_handshake_key(t, c), f"CPU per handshake TLS {t} {c}", "ms", False) for t, c in CELLS]
    for t, c in CELLS:
        cell = f"tls{t.replace('.', '')}_{c.lower()}"
        metrics += [
            Metric(f"fork_parent_us_{cell}", f"fork price TLS {t} {c}: parent CPU per connection (accept, fork, reap)",
                   "us", False),
            Metric(f"fork_child_faults_{cell}", f"fork price TLS {t} {c}: minor page faults per session process",
                   "faults", False),
            Metric(f"fork_child_system_us_{cell}", f"fork price TLS {t} {c}: system CPU per session process", "us",
                   False),
        ]
    metrics += [
        Metric("upload_mib_s", "throughput upload (1 conn)", "MiB/s", True),
        Metric("download_mib_s", "throughput download (1 conn)", "MiB/s", True),
        Metric("cpu_per_gib_upload", "CPU per GiB upload", "s", False),
        Metric("cpu_per_gib_download", "CPU per GiB download", "s", False),
        Metric("rtt_median_us", "round trip 64 B, median", "us", False),
        Metric("rtt_p99_us", "round trip 64 B, p99", "us", False),
        Metric("pss_per_connection_kib", "PSS per idle connection (total/N)", "KiB", False),
        Metric("pss_marginal_kib", "PSS per extra idle connection", "KiB", False),
        Metric("private_dirty_marginal_kib", "private dirty per extra idle connection", "KiB", False),
    ]
    metrics += [Metric(f"child_private_dirty_{mapping}_kib", f"one session process: private dirty, {mapping}", "KiB",
                       False) for mapping in CHILD_MAPPINGS]
    metrics += [
        Metric("many_idle_total_pss_mib", "many idle connections: total PSS", "MiB", False),
        Metric("many_idle_pss_per_connection_kib", "many idle connections: PSS per connection", "KiB", False),
        Metric("inetd_wall_ms", "inetd mode: wall per connection", "ms", False),
        Metric("inetd_cpu_ms", "inetd mode: CPU per connection", "ms", False),
    ]
    metrics += [Metric(resumed_key(t, c), f"resumed handshakes/s TLS {t} {c} (shared ticket keys)", "1/s", True)
                for t, c in CELLS]
    metrics += [
        Metric("inetd_resumed_wall_ms", "inetd mode: wall per resumed connection (shared ticket keys)", "ms", False),
        Metric("inetd_resumed_cpu_ms", "inetd mode: CPU per resumed connection (shared ticket keys)", "ms", False),
        Metric("certdir_inetd_wall_ms", "inetd mode: wall per connection, -certdir of many names", "ms", False),
        Metric("certdir_one_file_wall_ms", "inetd mode: wall per connection, -certdir of that name alone", "ms",
               False),
        Metric("certdir_single_wall_ms", "inetd mode: wall per connection, that name's -cert alone", "ms", False),
    ]
    return metrics


class Store:
    """Samples per metric and program, side notes (client CPU, utilisation), and the runs that failed."""

    def __init__(self):
        self.samples = {}
        self.notes = {}
        self.failures = []

    def add(self, key, kind, value):
        self.samples.setdefault(key, {}).setdefault(kind, []).append(value)

    def note(self, key, value):
        self.notes.setdefault(key, []).append(value)

    def fail(self, what, reason):
        self.failures.append(f"{what}: {reason}")
        print(f"bench: FAILED {what}: {reason}", flush=True)

    def median(self, key, kind):
        values = self.samples.get(key, {}).get(kind, [])
        return statistics.median(values) if values else None

    def note_median(self, key):
        values = self.notes.get(key, [])
        return statistics.median(values) if values else None
