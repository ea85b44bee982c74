"""What each mode of the soak runs against, started for real and watched by PID: the plaintext backend, the
syslog sinks, dovecot, and either the sslwrap daemons (daemon mode) or tcpserver starting sslwrap per connection
(inetd mode). Also the mix of kinds each mode's bursts are made of.

It starts processes only through benchlib.procs (stopped by PID, never by name) and judges nothing."""

import os
import sys
from dataclasses import dataclass, field

from benchlib import procs

from . import dovecot
from .syslog import Sink

BACKEND = os.path.join(os.path.dirname(os.path.abspath(__file__)), "backend.py")

# Shares of each burst. Slow handshakes are few: each holds a daemon slot for the whole handshake timeout.
DAEMON_MIX = {"full": 0.70, "starttls": 0.08, "client_reset": 0.06, "garbage": 0.06, "backend_reset": 0.04,
              "backend_refused": 0.05, "slow_handshake": 0.01}
# inetd mode has one superserver in front of one backend: no STARTTLS or refused-backend instance of its own.
INETD_MIX = {"full": 0.78, "client_reset": 0.07, "garbage": 0.06, "backend_reset": 0.07, "slow_handshake": 0.02}


@dataclass
class Target:
    mode: str
    mix: dict
    ports: dict = field(default_factory=dict)  # kind of entry ("main", "starttls", "refused") -> port
    watched: dict = field(default_factory=dict)  # label -> PID whose fds, RSS and children are sampled
    sinks: dict = field(default_factory=dict)  # label -> Sink for that process's sessions
    sink_of_kind: dict = field(default_factory=dict)  # kind -> label of the sink its lines go to


def _start_backend(scratch):
    port = procs.free_port()
    log = os.path.join(scratch, "backend.log")
    process = procs.start([sys.executable, BACKEND, str(port)], log)
    procs.wait_listening(process, port, "the soak backend", log)
    return port


def _with_sink(sink, argv):
    # env(1) execs the program in place, so the PID started is the program's; only it gets the syslog socket.
    return ["env", f"SSLWRAP_SYSLOG_SOCKET={sink.socket_path}"] + argv


def _start_daemon(sslwrap, scratch, label, arguments, sink):
    port = procs.free_port()
    log = os.path.join(scratch, f"{label}.stderr")
    process = procs.start(_with_sink(sink, [sslwrap] + arguments + ["-accept", f"127.0.0.1:{port}"]), log)
    procs.wait_listening(process, port, f"sslwrap ({label})", log)
    return process, port


def daemon_mode(sslwrap, scratch, certificate, handshake_timeout):
    """Three daemons: the main one (every kind but two), one with -starttls imap in front of dovecot, one whose
    backend port is closed."""
    target = Target("daemon", DAEMON_MIX)
    backend = _start_backend(scratch)
    _, imap = dovecot.start(scratch)
    common = ["-cert", certificate, "-handshake_timeout", str(handshake_timeout)]
    instances = {
        "main": ("main daemon", ["-port", str(backend)]),
        "starttls": ("STARTTLS daemon", ["-port", str(imap), "-starttls", "imap"]),
        "refused": ("refused-backend daemon", ["-port", str(procs.free_port())]),
    }
    for entry, (label, arguments) in instances.items():
        sink = Sink(scratch, entry)
        process, port = _start_daemon(sslwrap, scratch, entry, common + arguments, sink)
        target.ports[entry] = port
        target.watched[label] = process.pid
        target.sinks[label] = sink
    for kind in target.mix:
        target.sink_of_kind[kind] = {"starttls": "STARTTLS daemon",
                                     "backend_refused": "refused-backend daemon"}.get(kind, "main daemon")
    return target


def inetd_mode(sslwrap, scratch, certificate, handshake_timeout, concurrency=300):
    """tcpserver (ucspi-tcp) starting `sslwrap -cert FILE -port P` per connection, as a run script would."""
    target = Target("inetd", INETD_MIX)
    backend = _start_backend(scratch)
    sink = Sink(scratch, "inetd")
    port = procs.free_port()
    log = os.path.join(scratch, "tcpserver.stderr")
    # -R -H -l 0: no ident or DNS lookups per connection; -c: room for the slow handshakes.
    argv = ["tcpserver", "-R", "-H", "-l", "0", "-c", str(concurrency), "127.0.0.1", str(port),
            sslwrap, "-cert", certificate, "-port", str(backend), "-handshake_timeout", str(handshake_timeout)]
    process = procs.start(_with_sink(sink, argv), log)
    procs.wait_listening(process, port, "tcpserver", log)
    target.ports["main"] = port
    target.watched["tcpserver"] = process.pid
    target.sinks["tcpserver"] = sink
    for kind in target.mix:
        target.sink_of_kind[kind] = "tcpserver"
    return target
