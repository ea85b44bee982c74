"""The soak's record: soak/RESULTS.md (date, machine, command, settings, a summary per mode and its verdict) and
soak/soak.svg (descriptors, RSS and session processes over connections, every watched process of both modes),
written from the modes' JSON records. A hand-written SVG: no plotting package needed.

It only formats; the verdicts come from judge.py."""

import html

KIND_NAMES = {
    "full": "full TLS sessions, sha256 checked both ways", "starttls": "IMAP STARTTLS sessions (dovecot)",
    "client_reset": "clients resetting mid-transfer (SO_LINGER 0)", "garbage": "garbage ClientHellos",
    "slow_handshake": "stalled handshakes cut at -handshake_timeout", "backend_reset": "backend resets mid-transfer",
    "backend_refused": "backend refusing the connection",
}


def _mode_section(record, settings_line, stop_reason):
    out = [f"## {record['mode']} mode", ""]
    reached = f"{record['reached']:,} of {record['planned']:,} planned connections"
    if record["time_limited"]:
        reached += (f" — **time-limited**: stopped at SOAK_STOP_AT ({stop_reason}), not by a failure")
    rate = record["reached"] / record["elapsed_s"] if record["elapsed_s"] else 0
    out += [f"- Connections: {reached}, in {record['elapsed_s']:,.0f} s ({rate:,.0f} per second), "
            f"{len(record['samples'])} samples.",
            f"- Connections whose client saw the daemon misbehave: {record['totals']['client_failures']:,}.",
            f"- {settings_line}", ""]
    out += ["| kind | connections | syslog lines | expected |", "|---|---:|---:|---:|"]
    totals = record["totals"]
    for kind in record["mix"]:
        out.append(f"| {KIND_NAMES.get(kind, kind)} | {totals['connections'].get(kind, 0):,} | "
                   f"{totals['lines'].get(kind, 0):,} | {totals['expected'].get(kind, 0):,} |")
    out += ["", "| watched process | open fds (min–max) | RSS first / min / max KiB | RSS growth | zombies max | "
            "session processes after each burst (max) |", "|---|---|---|---:|---:|---:|"]
    for label, s in record["summary"].items():
        out.append(f"| {label} | {s['fds_min']}–{s['fds_max']} | {s['rss_first_kib']:,} / {s['rss_min_kib']:,} / "
                   f"{s['rss_max_kib']:,} | {s['rss_growth_kib']:+,} KiB | {s['zombies_max']} | "
                   f"{s['children_after_bursts_max']} |")
    verdict = "PASS" if not record["violations"] else f"FAIL ({len(record['violations'])} violations)"
    out += ["", f"**Verdict: {verdict}.**", ""]
    for violation in record["violations"][:40]:
        out.append(f"- {violation}")
    if len(record["violations"]) > 40:
        out.append(f"- ... and {len(record['violations']) - 40} more")
    return out + [""]


def results_markdown(records, machine, command, settings):
    band = settings.rss_band_kib
    out = ["# sslwrap soak results (issue 16)", "",
           f"Run of {machine['date']} on {machine['cpu']} ({machine['cpus']} CPUs, {machine['memory_gib']} GiB), "
           f"{machine['kernel']}; {machine['openssl']}; {machine['sslwrap']} ({machine['sslwrap_binary']}).",
           f"Source: commit {machine['revision']}. Load average at the start: {machine['load']} "
           "(the machine was shared with other work).", "",
           f"Command: `{command}`", "",
           "Each burst is SOAK_SAMPLE_EVERY connections made by SOAK_CLIENTS parallel clients, then a wait until the "
           "watched process has no session process left, then a sample. Judged at every sample: zombies 0, session "
           "processes 0, syslog lines per kind exactly the number of failing connections of that kind (matched by "
           "the client's port; none for clean ends); over the run: open descriptors constant and RSS at most "
           f"{band} KiB above the first sample.", ""]
    for record in records:
        line = (f"Settings: SOAK_CLIENTS={settings.clients}, SOAK_SAMPLE_EVERY={settings.sample_every}, "
                f"-handshake_timeout {settings.handshake_timeout}, RSS band {band} KiB.")
        out += _mode_section(record, line, machine.get("stop_reason") or "no reason given")
    out += ["![descriptors, RSS and session processes over connections](soak.svg)", ""]
    return "\n".join(out)


COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]


def _panel(series, title, unit, top, left, width, height):
    """One chart: series is [(label, [(x, y), ...])]."""
    points = [p for _, pts in series for p in pts]
    if not points:
        return []
    x_max = max(x for x, _ in points) or 1
    y_min = min(y for _, y in points)
    y_max = max(y for _, y in points)
    if y_max == y_min:
        y_min, y_max = y_min - 1, y_max + 1
    pad = (y_max - y_min) * 0.1
    y_min, y_max = y_min - pad, y_max + pad

    def sx(x):
        return left + width * x / x_max

    def sy(y):
        return top + height - height * (y - y_min) / (y_max - y_min)

    out = [f'<text x="{left}" y="{top - 8}" font-weight="bold">{html.escape(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="none" stroke="#999"/>']
    for fraction in (0, 0.5, 1):
        y = y_min + (y_max - y_min) * fraction
        out.append(f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:,.0f}</text>')
        x = x_max * fraction
        out.append(f'<text x="{sx(x):.1f}" y="{top + height + 16}" text-anchor="middle">{x:,.0f}</text>')
    out.append(f'<text x="{left + width / 2}" y="{top + height + 32}" text-anchor="middle">connections of the '
               f'mode ({html.escape(unit)})</text>')
    for index, (label, pts) in enumerate(series):
        colour = COLOURS[index % len(COLOURS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        out.append(f'<text x="{left + width + 10}" y="{top + 14 + 16 * index}" fill="{colour}">'
                   f'{html.escape(label)}</text>')
    return out


def svg(records):
    metrics = [("fds", "open descriptors of the watched process"), ("rss_kib", "RSS of the watched process, KiB"),
               ("children", "session processes left after each burst")]
    width, height, left, panel_w, panel_h = 1000, 40 + 260 * len(metrics) * len(records), 90, 600, 170
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="12">', '<rect width="100%" height="100%" fill="white"/>']
    top = 40
    for record in records:
        for key, title in metrics:
            series = [(label, [(s["connections"], s["processes"][label][key]) for s in record["samples"]])
                      for label in record["summary"]]
            out += _panel(series, f"{record['mode']} mode: {title}", "sampled after each burst", top, left,
                          panel_w, panel_h)
            top += 260
    out.append("</svg>")
    return "\n".join(out) + "\n"
