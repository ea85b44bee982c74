"""Judgement of the soak: which kind of connection each syslog line belongs to, whether a burst left exactly the
lines its failures must leave, and whether the watched processes stayed flat over the whole run.

Pure functions over readings; nothing here starts, reads or stops a process."""

import re

from .clients import EXPECTED_LINES

LINE = re.compile(r"^<(\d+)>sslwrap\[(\d+)\]: (.*)$")
# What sslwrap says for each failing kind, with the client's port in it. Order matters: the first match wins.
KIND_LINES = [
    ("slow_handshake", re.compile(r"^TLS handshake with 127\.0\.0\.1:(\d+) failed: not completed within ")),
    ("garbage", re.compile(r"^TLS handshake with 127\.0\.0\.1:(\d+) failed: ")),
    ("client_reset", re.compile(r"^127\.0\.0\.1:(\d+): session ended: client: ")),
    ("backend_reset", re.compile(r"^127\.0\.0\.1:(\d+): session ended: backend: ")),
    ("backend_refused", re.compile(r"^127\.0\.0\.1:(\d+): cannot connect to backend ")),
]


def classify(line):
    """(kind, client port) for a line the soak expects some kind to cause, or (None, None)."""
    match = LINE.match(line)
    if not match:
        return None, None
    for kind, pattern in KIND_LINES:
        found = pattern.match(match.group(3))
        if found:
            return kind, int(found.group(1))
    return None, None


def judge_lines(lines, ports_by_kind, label):
    """Violations in one sink's lines for one burst. ports_by_kind: kind -> client ports of the connections of that
    kind whose lines go to this sink. Returns (line counts by kind, expected counts by kind, violations)."""
    counts, violations, unexplained = {}, [], []
    port_kind = {}
    for kind, ports in ports_by_kind.items():
        for port in ports:
            port_kind.setdefault(port, set()).add(kind)
    for line in lines:
        kind, port = classify(line)
        if kind is None or kind not in port_kind.get(port, set()):
            unexplained.append(line)
            continue
        counts[kind] = counts.get(kind, 0) + 1
    expected = {kind: len(ports) * EXPECTED_LINES[kind] for kind, ports in ports_by_kind.items()}
    for kind, want in expected.items():
        if counts.get(kind, 0) != want:
            violations.append(f"{label}: {counts.get(kind, 0)} syslog lines for {kind}, expected {want}")
    if unexplained:
        violations.append(f"{label}: {len(unexplained)} syslog lines no failing connection explains, such as: "
                          + " | ".join(unexplained[:3]))
    return counts, expected, violations


def judge_sample(sample):
    """Violations visible in one sample alone: zombies, session processes left after the burst."""
    violations = []
    for label, reading in sample["processes"].items():
        if reading["zombies"]:
            violations.append(f"{label}: {reading['zombies']} zombies after {sample['connections']} connections")
        if reading["children"]:
            violations.append(f"{label}: {reading['children']} session processes left after the burst ending at "
                              f"{sample['connections']} connections")
    return violations


def judge_run(samples, rss_band_kib):
    """Violations over the whole run, and a summary per watched process: descriptors constant, RSS in its band."""
    violations, summary = [], {}
    if not samples:
        return ["no sample was taken"], summary
    for label in samples[0]["processes"]:
        readings = [s["processes"][label] for s in samples]
        fds = [r["fds"] for r in readings]
        rss = [r["rss_kib"] for r in readings]
        summary[label] = {
            "fds_min": min(fds), "fds_max": max(fds), "rss_first_kib": rss[0], "rss_min_kib": min(rss),
            "rss_max_kib": max(rss), "rss_growth_kib": max(rss) - rss[0],
            "zombies_max": max(r["zombies"] for r in readings),
            "children_after_bursts_max": max(r["children"] for r in readings),
        }
        if len(set(fds)) != 1:
            violations.append(f"{label}: open descriptors changed: {fds[0]} at the first sample, "
                              f"between {min(fds)} and {max(fds)} over the run")
        if max(rss) - rss[0] > rss_band_kib:
            violations.append(f"{label}: RSS grew {max(rss) - rss[0]} KiB over the first sample ({rss[0]} KiB), "
                              f"more than the {rss_band_kib} KiB band")
    return violations, summary
