"""The ways sslwrap gets started in the field, each on the suite's own files: openbsd-inetd (+tcpd), xinetd,
tcpserver, systemd-socket-activate, and daemon-mode lines typed into a start-up script with '&'.

Each is a context manager: it starts the superserver, waits (bounded) until its ports listen, and on the way out stops
it by its own process group and waits until the ports are free again for the next one.
"""

import os
import shlex
from contextlib import contextmanager

from .procs import wait_closed, wait_listening

SOCKET_ACTIVATE = "/usr/bin/systemd-socket-activate"


@contextmanager
def serving(procs, name, argv, ports, launcher_exits=False):
    proc = procs.start(name, argv)
    try:
        wait_listening(procs, proc, ports, launcher_exits=launcher_exits)
        yield proc
    finally:
        procs.stop(proc)
        wait_closed(ports)


def inetd(procs, workdir, name, conf_lines, ports):
    """openbsd-inetd, in the foreground (-i), on a private inetd.conf holding exactly the given lines."""
    conf = os.path.join(workdir, f"inetd-{name}.conf")
    with open(conf, "w", encoding="utf-8") as config:
        config.write("# inetd.conf of one sslwrap compat-tests check\n" + "\n".join(conf_lines) + "\n")
    # openbsd-inetd always writes (and on exit deletes) the compiled-in /run/inetd.pid, which belongs to the
    # system's inetd if there is one. A private mount namespace with its own /run keeps our copy away from it.
    start = 'mount -n -t tmpfs -o size=1m,mode=755 sslwrap-compat-run /run && exec /usr/sbin/inetd -i "$0"'
    return serving(procs, f"inetd-{name}", ["unshare", "--mount", "--", "sh", "-c", start, conf], ports)


def xinetd_service(service, port, moved, bind_loopback, user, sslwrap_line):
    """One xinetd service file equivalent to an inetd.conf line: same user, same program, same flags."""
    words = shlex.split(sslwrap_line)
    name = f"sslwrap-{service}" if moved else service
    settings = [("socket_type", "stream"), ("protocol", "tcp"), ("wait", "no"), ("user", user),
                ("server", words[0]), ("server_args", " ".join(words[1:]))]
    if moved:
        # xinetd insists that a listed service use its /etc/services port; a moved one must be UNLISTED.
        settings += [("type", "UNLISTED"), ("port", str(port))]
    if bind_loopback:
        settings.append(("bind", "127.0.0.1"))
    body = "\n".join(f"    {key:<12}= {value}" for key, value in settings)
    return name, f"service {name}\n{{\n{body}\n}}\n"


def xinetd(procs, workdir, binary, service_files, ports):
    base = os.path.join(workdir, "xinetd")
    os.makedirs(os.path.join(base, "services"), exist_ok=True)
    for name, text in service_files:
        with open(os.path.join(base, "services", name), "w", encoding="utf-8") as service:
            service.write(text)
    conf = os.path.join(base, "xinetd.conf")
    with open(conf, "w", encoding="utf-8") as config:
        config.write(f"# Private xinetd.conf of sslwrap compat-tests\ndefaults\n{{\n"
                     f"    log_type     = FILE {base}/xinetd.log\n    instances    = 60\n}}\n"
                     f"includedir {base}/services\n")
    argv = [binary, "-f", conf, "-dontfork", "-pidfile", os.path.join(base, "xinetd.pid")]
    return serving(procs, "xinetd", argv, ports)


def tcpserver(procs, port, sslwrap_line):
    """ucspi-tcp: `tcpserver 127.0.0.1 PORT /usr/local/sbin/sslwrap ...`, connection on fds 0 and 1."""
    argv = ["tcpserver", "127.0.0.1", str(port), *shlex.split(sslwrap_line)]
    return serving(procs, "tcpserver", argv, [port])


def socket_activate(procs, port, sslwrap_line):
    """systemd's Accept=yes semantics: one sslwrap per connection, the connection on fd 0 (--inetd)."""
    argv = [SOCKET_ACTIVATE, "--inetd", "-a", "-l", f"127.0.0.1:{port}", *shlex.split(sslwrap_line)]
    return serving(procs, "socket-activate", argv, [port])


def daemon_lines(procs, workdir, name, shell_lines, ports):
    """A start-up script made of the documented `sslwrap ... &` lines, run by sh, which returns at once.

    The daemons stay in the script's process group, so stopping that group stops exactly them.
    """
    script = os.path.join(workdir, f"{name}.sh")
    with open(script, "w", encoding="utf-8") as rc:
        rc.write("#!/bin/sh\n# rc.inet2-style start of sslwrap daemons, lines as documented (sslwrap compat-tests)\n")
        rc.write("\n".join(shell_lines) + "\n")
    return serving(procs, name, ["/bin/sh", script], ports, launcher_exits=True)


def have_socket_activate():
    return os.access(SOCKET_ACTIVATE, os.X_OK)
