"""Everything the benchmark needs before the first measurement: the Debian packages, the load client binary, the
certificates, and a description of the machine for the record."""

import datetime
import hashlib
import os
import platform
import shutil
import subprocess

from .procs import BenchError, run

# The command each package provides, to tell an installed package from a missing one without asking apt.
PACKAGE_COMMANDS = {
    "stunnel4": "stunnel4",
    "hitch": "hitch",
    "ucspi-tcp": "tcpserver",
    "socat": "socat",
    "gnuplot-nox": "gnuplot",
}


def read_package_list(path):
    with open(path) as listing:
        return [line.split("#")[0].strip() for line in listing if line.split("#")[0].strip()]


def _installed(package):
    status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, check=False, timeout=30)
    return status.returncode == 0 and b"install ok installed" in status.stdout


def ensure_packages(package_list):
    """Installs missing packages as root; otherwise says what to run and stops the benchmark."""
    missing = [p for p in read_package_list(package_list)
               if not _installed(p) and not shutil.which(PACKAGE_COMMANDS.get(p, p))]
    if not missing:
        return
    install_line = "apt-get install -y --no-install-recommends " + " ".join(missing)
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BenchError(f"missing Debian packages; as root run: {install_line}")
    print(f"bench: installing {' '.join(missing)}", flush=True)
    _apt_install(missing)


def _apt_install(packages):
    # A policy-rc.d that says "no" keeps the packages' own services (stunnel4, hitch) from starting on install.
    guard = "/usr/sbin/policy-rc.d"
    placed_guard = not os.path.exists(guard)
    if placed_guard:
        with open(guard, "w") as script:
            script.write("#!/bin/sh\nexit 101\n")
        os.chmod(guard, 0o755)
    environment = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        for argv in (["apt-get", "update", "-qq"],
                     ["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + packages):
            if subprocess.run(argv, env=environment, check=False, timeout=900).returncode != 0:
                raise BenchError(f"{' '.join(argv[:2])} failed")
    finally:
        if placed_guard:
            os.remove(guard)


def require_commands(commands):
    """For the smoke test, which installs nothing: names what is missing."""
    missing = [c for c in commands if not shutil.which(c)]
    if missing:
        raise BenchError(f"missing commands: {' '.join(missing)} (see bench/packages)")


def build_loadgen(bench_dir, log_path):
    """Builds bench/loadgen in its own target directory (never the repository's, whose lock another build may
    hold) and returns the binary's path."""
    manifest = os.path.join(bench_dir, "loadgen", "Cargo.toml")
    target = os.path.join(bench_dir, "loadgen", "target")
    environment = dict(os.environ, CARGO_TARGET_DIR=target)
    with open(log_path, "ab") as log:
        built = subprocess.run(["cargo", "build", "--release", "--locked", "--quiet", "--manifest-path", manifest],
                               env=environment, stdout=log, stderr=log, check=False, timeout=900)
    if built.returncode != 0:
        raise BenchError(f"building bench/loadgen failed; see {log_path}")
    return os.path.join(target, "release", "sslwrap-loadgen")


class Certificate:
    """A self-signed certificate and key: separate files (stunnel), and both in one PEM (sslwrap, hitch)."""

    def __init__(self, name, workdir, key_options):
        self.name = name
        self.key = os.path.join(workdir, f"{name}.key")
        self.crt = os.path.join(workdir, f"{name}.crt")
        self.pem = os.path.join(workdir, f"{name}.pem")
        run(["openssl", "req", "-new", "-x509", "-nodes", "-days", "2", "-subj", "/CN=localhost",
             "-keyout", self.key, "-out", self.crt] + key_options, timeout=60)
        with open(self.pem, "w") as pem:
            for part in (self.crt, self.key):
                with open(part) as piece:
                    pem.write(piece.read())
        for path in (self.key, self.pem):
            os.chmod(path, 0o600)


def make_certificates(workdir):
    return {
        "ECDSA": Certificate("ecdsa", workdir, ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]),
        "RSA": Certificate("rsa", workdir, ["-newkey", "rsa:2048"]),
    }


class CertificateDirectory:
    """A -certdir of `count` names hN.example.org, one certificate (with the key in its file) each, all with one
    ECDSA key (the handshake's cost is the same for every name); `asked` is the name in the middle, `asked_pem` its
    file, `one_file_dir` a -certdir with only that file, `default_pem` the -cert certificate for every other client."""

    def __init__(self, workdir, count):
        self.dir = os.path.join(workdir, "names")
        os.mkdir(self.dir)
        key = os.path.join(workdir, "certdir.key")
        run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key],
            timeout=60)
        with open(key) as key_file:
            self._key_pem = key_file.read()
        self._key = key
        for n in range(count):
            self._certificate(f"h{n}.example.org", os.path.join(self.dir, f"h{n}.example.org.pem"))
        self.default_pem = os.path.join(workdir, "certdir-default.pem")
        self._certificate("default.example.org", self.default_pem)
        self.asked = f"h{count // 2}.example.org"
        self.asked_pem = os.path.join(self.dir, f"{self.asked}.pem")
        self.one_file_dir = os.path.join(workdir, "one-name")
        os.mkdir(self.one_file_dir)
        os.symlink(self.asked_pem, os.path.join(self.one_file_dir, f"{self.asked}.pem"))

    def _certificate(self, name, path):
        certificate = run(["openssl", "req", "-new", "-x509", "-key", self._key, "-subj", f"/CN={name}",
                           "-addext", f"subjectAltName=DNS:{name}", "-days", "2"], timeout=60)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as pem:
            pem.write(certificate + self._key_pem)


def _first_line(argv, containing=""):
    """The first output line of a version command that contains the given text."""
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not available"
    lines = [line for line in done.stdout.decode(errors="replace").splitlines()
             if line.strip() and containing in line]
    return lines[0].strip() if lines else "unknown"


def _cpu_model():
    models, count = [], 0
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                models.append(line.split(":", 1)[1].strip())
            if line.startswith("processor"):
                count += 1
    return (models[0] if models else platform.processor() or "unknown"), count


def _memory_gib():
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / (1024 * 1024), 1)
    return None


def _binary_identity(path):
    """The sslwrap build measured: a content hash and the build time, since the source tree may move on."""
    with open(path, "rb") as binary:
        digest = hashlib.sha256(binary.read()).hexdigest()[:16]
    built = datetime.datetime.fromtimestamp(os.path.getmtime(path), datetime.timezone.utc)
    return f"sha256 {digest}, built {built.strftime('%Y-%m-%d %H:%M UTC')}"


def describe_machine(sslwrap_bin):
    model, cpus = _cpu_model()
    uname = platform.uname()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model,
        "cpus": cpus,
        "memory_gib": _memory_gib(),
        "kernel": f"{uname.system} {uname.release} {uname.version} {uname.machine}",
        "openssl": _first_line(["openssl", "version"]),
        "sslwrap": _first_line([sslwrap_bin, "-version"]),
        "sslwrap_binary": _binary_identity(sslwrap_bin),
        "stunnel": _first_line(["stunnel4", "-version"], "stunnel ") if shutil.which("stunnel4") else "not installed",
        "hitch": _first_line(["hitch", "--version"]) if shutil.which("hitch") else "not installed",
        "socat": _first_line(["socat", "-V"], "version") if shutil.which("socat") else "not installed",
    }
