#!/usr/bin/python3
"""The compat suite proper, started by ./run through ./in-namespace: installs sslwrap and its certificate as the
documentation does, starts private backends, runs the seven scenarios of issue 5 and the testssl.sh scan of issue 16,
and reports the tally.

It must never touch the host's installation: it installs nothing unless it is in a private mount namespace whose
/usr/local and /etc are overlays (compat/isolation.py), and it checks, through a process that stayed in the host's
mount namespace, that the host's legacy paths are unchanged at the start and at the end.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile

from compat import backends, host, isolation, lines, scenarios
from compat.procs import ProcessSet
from compat.report import CheckFailed, Report
from compat.syslog import SyslogCollector

REQUIRED_TOOLS = ["/usr/sbin/inetd", "/usr/sbin/tcpd", "/usr/bin/tcpserver", "/usr/sbin/dovecot",
                  "/usr/lib/dovecot/imap", "/usr/sbin/nginx", "/usr/bin/socat", "/usr/bin/curl", "/usr/bin/gnutls-cli",
                  "/usr/bin/openssl", "/usr/bin/unshare", "/usr/bin/testssl"]


def interrupted(signum, _frame):
    # Turn a stop request into an exception so that every `finally` (teardown, the last host check) still runs.
    raise KeyboardInterrupt(f"signal {signum}")


def bring_up_loopback():
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=30)


def child_environment(syslog_socket):
    env = dict(os.environ)
    env["SSLWRAP_SYSLOG_SOCKET"] = syslog_socket
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return env


def plan_ports(report, netns):
    plan = lines.PortPlan(addresses=["0.0.0.0"])
    for label, port in {**lines.WELL_KNOWN, **lines.BACKEND_PORTS}.items():
        plan.choose(label, port)
    for note in plan.notes:
        report.note(note)
    if netns:
        report.note("running in a private network namespace: only its loopback exists (127.0.0.1, 127.0.0.2)")
    else:
        report.note("no private network namespace: listeners are bound to 127.0.0.1 explicitly "
                    "(inetd '127.0.0.1:' prefix, xinetd bind, -accept 127.0.0.1:PORT)")
    return plan


def xinetd_from_environment():
    binary = os.environ.get("SSLWRAP_COMPAT_XINETD") or None
    return binary, (None if binary else os.environ.get("SSLWRAP_COMPAT_XINETD_MISSING", "xinetd not available"))


def set_up(report, procs, workdir, installation, syslog, netns):
    missing = [tool for tool in REQUIRED_TOOLS if not os.access(tool, os.X_OK)]
    if missing:
        raise CheckFailed(f"missing tools {missing}: install the packages in compat-tests/packages")
    ports = plan_ports(report, netns)
    installation.install_binary(os.environ["SSLWRAP_BIN"])
    installation.ensure_service_user()
    installation.make_certificate()
    mailbox = backends.Mailbox(workdir)
    mailbox.plant()
    _, dovecot_conf = backends.start_dovecot(procs, workdir, mailbox, ports, lines.OTHER_COMPUTER,
                                             scenarios.OTHER_GREETING)
    wrapper = backends.imapd_wrapper_script(host.MARKER, mailbox, dovecot_conf)
    imapd = installation.install_exec_wrapper(wrapper)
    _, payload = backends.start_nginx(procs, workdir, ports[80])
    backends.start_echo(procs, ports[23])
    for note in installation.notes:
        report.note(note)
    return scenarios.Context(report, procs, workdir, ports, mailbox, payload, imapd, netns,
                             xinetd_from_environment(), syslog)


def run_scenarios(ctx):
    for scenario in (scenarios.scenario_install, scenarios.scenario_inetd, scenarios.scenario_xinetd, scenarios.scenario_tcpserver,
                     scenarios.scenario_socket_activation, scenarios.scenario_daemon,
                     scenarios.scenario_other_tls_stacks, scenarios.scenario_legacy_clients,
                     scenarios.scenario_testssl):
        scenario(ctx)


def tear_down(report, procs, syslog, workdir):
    # Nothing to put back: the installation lives in the private namespace and vanishes with it.
    procs.stop_all()
    syslog.close()
    if os.environ.get("COMPAT_KEEP") == "1":
        report.note(f"COMPAT_KEEP=1: logs and configuration kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def check_isolation_first(report):
    """Refuses to install anything unless the namespace is private and the host still looks as run described it."""
    host_view = isolation.HostView(os.environ)
    host_view.require_private_namespace()
    report.section(f"isolation: the host's own view (/proc/{host_view.pid}/root) of the legacy paths, before installing")
    failed = report.failed
    report.check("isolation-host-untouched-at-start", host_view.unchanged)
    if report.failed > failed:
        raise CheckFailed("nothing installed: the host's files already differ from run's description")
    return host_view


def main():
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, interrupted)
    netns = os.environ.get("SSLWRAP_COMPAT_NETNS") == "1"
    workdir = tempfile.mkdtemp(prefix="sslwrap-compat.")
    # The mail user (nobody) and the sslwrap user must reach their files and the syslog socket in here.
    os.chmod(workdir, 0o755)
    os.mkdir(os.path.join(workdir, "logs"), 0o700)
    syslog = SyslogCollector(os.path.join(workdir, "syslog.sock"), os.path.join(workdir, "logs", "syslog.log"))
    report = Report(syslog)
    procs = ProcessSet(os.path.join(workdir, "logs"), child_environment(syslog.path))
    installation = host.Installation()
    host_view = None
    try:
        host_view = check_isolation_first(report)
        if netns:
            bring_up_loopback()
        ctx = set_up(report, procs, workdir, installation, syslog, netns)
        run_scenarios(ctx)
    except CheckFailed as failure:
        report.fail("setup", str(failure))
    except KeyboardInterrupt as stop:
        report.fail("interrupted", f"stopped by {stop}; tearing down")
    finally:
        tear_down(report, procs, syslog, workdir)
        if host_view:
            report.section("isolation, at the end: the host's view again, everything of ours still installed in here")
            report.check("isolation-host-untouched-at-end", host_view.unchanged)
    report.close(os.environ.get("SSLWRAP_COMPAT_TALLY"))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
