"""How each program under test is started in front of a backend on loopback: sslwrap, stunnel and hitch as
daemons, socat as the plain-TCP relay ceiling, and sslwrap and stunnel in inetd mode under tcpserver.

Each runs with its own defaults except where a default would make the comparison unfair: stunnel logs errors and
warnings only (sslwrap's default; stunnel's own default logs two lines per connection), and hitch gets one worker
per core (its default is one worker in all, where sslwrap and stunnel use every core). For the resumption cells
both get the same shared session-ticket keys from a file: sslwrap's `-ticketkey` (nginx's 80-byte format) and
stunnel's `ticketKeySecret`/`ticketMacSecret` (the AES and HMAC keys of that file, in hex). stunnel 5.68 on OpenSSL
3 needs no `options` line for tickets: NO_TICKET is off by default, and its TLS 1.3 tickets are the stateless ones
OpenSSL makes with those keys.
"""

import os

from . import procs

# nginx's ssl_session_ticket_key layout, which sslwrap's -ticketkey reads: key name, HMAC key, AES key.
TICKET_NAME_BYTES, TICKET_SECRET_BYTES = 16, 32


class TicketKeys:
    """One random session-ticket key, as a -ticketkey file and as stunnel's two hex secrets."""

    def __init__(self, workdir):
        material = os.urandom(TICKET_NAME_BYTES + 2 * TICKET_SECRET_BYTES)
        self.path = os.path.join(workdir, "ticket.key")
        with open(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as key_file:
            key_file.write(material)
        hmac_key = material[TICKET_NAME_BYTES:TICKET_NAME_BYTES + TICKET_SECRET_BYTES]
        aes_key = material[TICKET_NAME_BYTES + TICKET_SECRET_BYTES:]
        self.stunnel_lines = [f"ticketKeySecret = {aes_key.hex()}", f"ticketMacSecret = {hmac_key.hex()}"]

DAEMONS = ("sslwrap", "stunnel", "hitch")
INETD = ("sslwrap", "stunnel")


class Endpoint:
    """A running program listening on 127.0.0.1:port, with what it was idle at (for settle())."""

    def __init__(self, kind, process, port, log_path):
        self.kind = kind
        self.process = process
        self.port = port
        self.log_path = log_path
        self.address = f"127.0.0.1:{port}"
        self.idle_children = len(procs.descendants(process.pid))
        self.idle_threads = procs.thread_count(process.pid)

    def cpu_seconds(self):
        return procs.tree_cpu_seconds(self.process.pid)

    def settle(self):
        procs.settle(self.process.pid, self.idle_children, self.idle_threads)

    def stop(self):
        procs.stop(self.process)


class Launcher:
    """Knows the binaries, certificates and scratch directory; starts endpoints."""

    def __init__(self, workdir, sslwrap_bin, certificates, cpus):
        self.workdir = workdir
        self.sslwrap_bin = sslwrap_bin
        self.certificates = certificates
        self.cpus = cpus
        self.counter = 0
        self.ticket_keys = TicketKeys(workdir)

    def _paths(self, kind, suffix):
        self.counter += 1
        stem = os.path.join(self.workdir, f"{kind}-{self.counter}")
        return stem + ".log", stem + suffix

    def daemon(self, kind, backend_port, cert_name="ECDSA", extra=(), shared_tickets=False):
        """Starts one daemon of `kind` relaying to backend_port and waits until it listens; `extra` are more sslwrap
        options; `shared_tickets` gives sslwrap and stunnel the shared session-ticket keys."""
        port = procs.free_port()
        log_path, config_path = self._paths(kind, ".conf")
        cert = self.certificates[cert_name]
        extra = list(extra) + (["-ticketkey", self.ticket_keys.path] if shared_tickets else [])
        stunnel_extra = self.ticket_keys.stunnel_lines if shared_tickets else []
        argv = {
            "sslwrap": lambda: self._sslwrap_daemon(cert, backend_port, port) + extra,
            "stunnel": lambda: self._stunnel_daemon(config_path, cert, backend_port, port, stunnel_extra),
            "hitch": lambda: self._hitch_daemon(config_path, cert, backend_port, port),
            "socat": lambda: self._socat_relay(backend_port, port),
        }[kind]()
        process = procs.start(argv, log_path)
        procs.wait_listening(process, port, kind, log_path)
        return Endpoint(kind, process, port, log_path)

    def inetd(self, kind, backend_port, cert_name="ECDSA", sslwrap_options=None, shared_tickets=False):
        """Starts tcpserver running one `kind` process per connection (inetd mode, the connection on fds 0/1);
        `sslwrap_options` replace sslwrap's `-cert` of `cert_name`; `shared_tickets` gives sslwrap and stunnel the
        shared session-ticket keys."""
        port = procs.free_port()
        log_path, config_path = self._paths(f"{kind}-inetd", ".conf")
        cert = self.certificates[cert_name]
        if kind == "sslwrap":
            options = sslwrap_options or ["-cert", cert.pem]
            tickets = ["-ticketkey", self.ticket_keys.path] if shared_tickets else []
            command = [self.sslwrap_bin] + options + tickets + ["-port", str(backend_port)]
        else:
            stunnel_extra = self.ticket_keys.stunnel_lines if shared_tickets else []
            command = ["stunnel4", self._stunnel_inetd_config(config_path, log_path, cert, backend_port,
                                                               stunnel_extra)]
        # -R -H: no ident or DNS look-ups, which would dominate a loopback connection's time.
        argv = ["tcpserver", "-R", "-H", "-l", "localhost", "-c", "64", "127.0.0.1", str(port)] + command
        process = procs.start(argv, log_path)
        procs.wait_listening(process, port, f"tcpserver ({kind})", log_path)
        return Endpoint(kind, process, port, log_path)

    def _sslwrap_daemon(self, cert, backend_port, port):
        return [self.sslwrap_bin, "-cert", cert.pem, "-port", str(backend_port), "-accept", f"127.0.0.1:{port}"]

    @staticmethod
    def _write(path, lines):
        with open(path, "w") as config:
            config.write("\n".join(lines) + "\n")
        return path

    def _stunnel_daemon(self, config_path, cert, backend_port, port, extra):
        self._write(config_path, [
            "foreground = yes", "pid =", "syslog = no", "debug = 4",
            "[bench]", f"accept = 127.0.0.1:{port}", f"connect = 127.0.0.1:{backend_port}",
            f"cert = {cert.crt}", f"key = {cert.key}",
        ] + extra)
        return ["stunnel4", config_path]

    def _stunnel_inetd_config(self, config_path, log_path, cert, backend_port, extra):
        # No service section and no accept: stunnel serves the connection on stdin/stdout.
        return self._write(config_path, [
            "pid =", "syslog = no", "debug = 4", f"output = {log_path}",
            f"connect = 127.0.0.1:{backend_port}", f"cert = {cert.crt}", f"key = {cert.key}",
        ] + extra)

    def _hitch_daemon(self, config_path, cert, backend_port, port):
        ocsp_dir = os.path.join(self.workdir, "hitch-ocsp")
        os.makedirs(ocsp_dir, exist_ok=True)
        lines = [
            f'frontend = "[127.0.0.1]:{port}"', f'backend = "[127.0.0.1]:{backend_port}"',
            f'pem-file = "{cert.pem}"', f"workers = {self.cpus}", "daemon = off", "log-level = 1",
            f'ocsp-dir = "{ocsp_dir}"',
        ]
        if os.geteuid() == 0:
            # hitch refuses to run its workers as root; it reads the key before switching.
            os.chmod(ocsp_dir, 0o777)
            lines += ['user = "nobody"', 'group = "nogroup"']
        return ["hitch", f"--config={self._write(config_path, lines)}"]

    @staticmethod
    def _socat_relay(backend_port, port):
        # A fork per connection like sslwrap, and buffers as large as the TLS wrappers' records or larger.
        return ["socat", "-b", "131072", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,nodelay",
                f"TCP:127.0.0.1:{backend_port},nodelay"]
