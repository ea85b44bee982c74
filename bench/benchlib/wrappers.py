"""How each program under test is started in front of a backend on loopback: sslwrap, stunnel and hitch as
daemons, socat as the plain-TCP relay ceiling, and sslwrap and stunnel in inetd mode under tcpserver.

Each runs with its own defaults except where a default would make the comparison unfair: stunnel logs errors and
warnings only (sslwrap's default; stunnel's own default logs two lines per connection), and hitch gets one worker
per core (its default is one worker in all, where sslwrap and stunnel use every core).
"""

import os

from . import procs

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

    def _paths(self, kind, suffix):
        self.counter += 1
        stem = os.path.join(self.workdir, f"{kind}-{self.counter}")
        return stem + ".log", stem + suffix

    def daemon(self, kind, backend_port, cert_name="ECDSA", extra=()):
        """Starts one daemon of `kind` relaying to backend_port and waits until it listens; `extra` are more sslwrap
        options."""
        port = procs.free_port()
        log_path, config_path = self._paths(kind, ".conf")
        cert = self.certificates[cert_name]
        argv = {
            "sslwrap": lambda: self._sslwrap_daemon(cert, backend_port, port) + list(extra),
            "stunnel": lambda: self._stunnel_daemon(config_path, cert, backend_port, port),
            "hitch": lambda: self._hitch_daemon(config_path, cert, backend_port, port),
            "socat": lambda: self._socat_relay(backend_port, port),
        }[kind]()
        process = procs.start(argv, log_path)
        procs.wait_listening(process, port, kind, log_path)
        return Endpoint(kind, process, port, log_path)

    def inetd(self, kind, backend_port, cert_name="ECDSA"):
        """Starts tcpserver running one `kind` process per connection (inetd mode, the connection on fds 0/1)."""
        port = procs.free_port()
        log_path, config_path = self._paths(f"{kind}-inetd", ".conf")
        cert = self.certificates[cert_name]
        if kind == "sslwrap":
            command = [self.sslwrap_bin, "-cert", cert.pem, "-port", str(backend_port)]
        else:
            command = ["stunnel4", self._stunnel_inetd_config(config_path, log_path, cert, backend_port)]
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

    def _stunnel_daemon(self, config_path, cert, backend_port, port):
        self._write(config_path, [
            "foreground = yes", "pid =", "syslog = no", "debug = 4",
            "[bench]", f"accept = 127.0.0.1:{port}", f"connect = 127.0.0.1:{backend_port}",
            f"cert = {cert.crt}", f"key = {cert.key}",
        ])
        return ["stunnel4", config_path]

    def _stunnel_inetd_config(self, config_path, log_path, cert, backend_port):
        # No service section and no accept: stunnel serves the connection on stdin/stdout.
        return self._write(config_path, [
            "pid =", "syslog = no", "debug = 4", f"output = {log_path}",
            f"connect = 127.0.0.1:{backend_port}", f"cert = {cert.crt}", f"key = {cert.key}",
        ])

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
