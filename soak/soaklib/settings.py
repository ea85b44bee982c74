"""The soak's settings, read from the environment once: how many connections, how many clients at once, how often
to sample, and the optional wall-clock time after which the run stops early. Nothing else reads the environment."""

import datetime
import os
from dataclasses import dataclass


class SettingsError(Exception):
    """A setting has a value the soak cannot use; the message names the variable."""


@dataclass
class Settings:
    daemon_connections: int
    inetd_connections: int
    clients: int
    sample_every: int
    stop_at: float | None  # seconds since the epoch, or None
    handshake_timeout: int
    rss_band_kib: int


def _count(name, default, minimum=1):
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r} is below {minimum}")
    return value


def parse_stop_at(raw, now=None):
    """Seconds since the epoch for SOAK_STOP_AT: "HH:MM" (UTC, today), an ISO 8601 time, or epoch seconds."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        clock = datetime.time.fromisoformat(raw)
        return datetime.datetime.combine(now.date(), clock, datetime.timezone.utc).timestamp()
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise SettingsError(f"SOAK_STOP_AT={raw!r} is not HH:MM (UTC), an ISO 8601 time or epoch seconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def from_environment():
    stop_at = os.environ.get("SOAK_STOP_AT", "")
    return Settings(
        daemon_connections=_count("SOAK_N", 1_000_000),
        inetd_connections=_count("SOAK_INETD_N", 100_000),
        clients=_count("SOAK_CLIENTS", 16),
        sample_every=_count("SOAK_SAMPLE_EVERY", 10_000, minimum=100),
        stop_at=parse_stop_at(stop_at) if stop_at else None,
        # One daemon serves every kind, so one timeout for all: 3 s, not 1 s, so that a loaded machine (load
        # average 25-30 was seen) does not time out real handshakes.
        handshake_timeout=_count("SOAK_HANDSHAKE_TIMEOUT", 3),
        rss_band_kib=_count("SOAK_RSS_BAND_KIB", 256),
    )
