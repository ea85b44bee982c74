"""The seven scenarios of issue 5 (the documented lines under each way of starting sslwrap, with real clients) and
testssl.sh's scan of the documentation's default line (issue 16).

Each check starts what it needs, lets a client do what a user would, asserts what the user would see, and stops what it
started. A check's name says the scenario (its number), the superserver and the service.
"""

import os
import pwd
import re

from . import clients, host, lines, superservers, testssl
from .procs import run, tail_text
from .report import CheckFailed, Skipped, fail_unless

OTHER_GREETING = "other computer ready"
LEGACY_WARNING = re.compile(r"legacy|insecure|security level", re.I)


class Context:
    """Everything the scenarios share: the report, the processes, the plan of ports and the planted test data."""

    def __init__(self, report, procs, workdir, ports, mailbox, payload, imapd, netns, xinetd, syslog):
        self.report = report
        self.procs = procs
        self.workdir = workdir
        self.ports = ports
        self.mailbox = mailbox
        self.payload = payload
        self.imapd = imapd
        self.netns = netns
        self.xinetd_binary, self.xinetd_unavailable = xinetd  # (path, None) or (None, why not)
        self.syslog = syslog
        self.cert_der = clients.certificate_der(lines.CERT)

    def port(self, documented):
        return self.ports[documented]


# -- what the user sees, per service ------------------------------------------------------------------------------------

def https_user(ctx):
    return lambda port: clients.https_fetch(port, ctx.payload, ctx.workdir)


def imap_user(ctx):
    """IMAP with a client that trusts exactly the documented certificate, so the right certificate must be served."""
    def session(port):
        _, cert = clients.imap_session(port, ctx.mailbox, clients.trusting(lines.CERT))
        fail_unless(cert == ctx.cert_der, "the server's certificate is not /usr/local/ssl/certs/server.pem")
        return "LOGIN, SELECT, FETCH of the planted message; server.pem verified"
    return session


def imap_nocert_user(ctx):
    def session(port):
        _, cert = clients.imap_session(port, ctx.mailbox, clients.trusting_anything())
        fail_unless(cert and cert != ctx.cert_der, "-nocert still served server.pem")
        return "encrypted session with an ephemeral certificate, message fetched"
    return session


def imap_other_computer_user(ctx):
    def session(port):
        greeting, _ = clients.imap_session(port, ctx.mailbox, clients.trusting(lines.CERT))
        fail_unless(OTHER_GREETING in greeting,
                    f"greeting {greeting!r} is not the one of {lines.OTHER_COMPUTER}: -addr was not followed")
        return f"greeting of the backend on {lines.OTHER_COMPUTER}, message fetched"
    return session


def pop3_user(ctx):
    def session(port):
        clients.pop3_session(port, ctx.mailbox, clients.trusting(lines.CERT))
        return "USER/PASS, STAT, RETR of the planted message, QUIT"
    return session


def telnet_user(_ctx):
    return clients.echo_through


# -- helpers ------------------------------------------------------------------------------------------------------------

def inetd_conf_line(ctx, line):
    return lines.inetd_line(line, ctx.ports, bind_loopback=not ctx.netns)


def under_inetd(ctx, name, line, documented_port, user):
    conf_line = inetd_conf_line(ctx, line)
    ctx.report.say(f"#   inetd.conf: {conf_line}")
    port = ctx.port(documented_port)
    with superservers.inetd(ctx.procs, ctx.workdir, name, [conf_line], [port]):
        return user(port)


def sslwrap_command(ctx, inetd_line):
    return lines.with_ports(lines.sslwrap_words(inetd_line), ctx.ports)


# -- 0: the installation the documentation assumes ------------------------------------------------------------------------

def scenario_install(ctx):
    ctx.report.section("0 the installation every line relies on: binary, certificate, hash link, sslwrap user")
    ctx.report.check("0-install-as-documented", installed_as_documented)


def installed_as_documented():
    status, said = run([lines.SSLWRAP, "-version"], timeout=10)
    fail_unless(status == 0, f"{lines.SSLWRAP} -version exited {status}: {tail_text(said)}")
    mode = os.stat(lines.CERT).st_mode & 0o777
    fail_unless(mode == 0o600, f"{lines.CERT} has mode {mode:o}, the documentation says 600")
    # The hash link is what lets OpenSSL find the certificate in the directory.
    status, said = run(["openssl", "verify", "-CApath", lines.CERT_DIR, lines.CERT], timeout=10)
    fail_unless(status == 0, f"openssl verify -CApath {lines.CERT_DIR} does not find it: {tail_text(said)}")
    fail_unless(can_read_as(host.SERVICE_USER, lines.CERT), f"user {host.SERVICE_USER} cannot read {lines.CERT}")
    fail_unless(not can_read_as("nobody", lines.CERT), f"user nobody can read the private key in {lines.CERT}")
    shell = pwd.getpwnam(host.SERVICE_USER).pw_shell
    fail_unless(shell.endswith("nologin"), f"user {host.SERVICE_USER} has login shell {shell}")
    return f"mode 600, hash link found by openssl verify, readable by {host.SERVICE_USER} only"


def can_read_as(user, path):
    entry = pwd.getpwnam(user)
    status, _ = run(["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups",
                     "head", "-c", "1", path], timeout=10)
    return status == 0


# -- 1: openbsd-inetd + tcpd ---------------------------------------------------------------------------------------------

def scenario_inetd(ctx):
    ctx.report.section("1 openbsd-inetd + tcpd: the documented inetd.conf lines, one private inetd.conf each")
    cases = [
        ("1-inetd-https", lines.INETD_HTTPS, 443, https_user(ctx)),
        ("1-inetd-imaps", lines.INETD_IMAPS, 993, imap_user(ctx)),
        ("1-inetd-pop3s", lines.INETD_POP3S, 995, pop3_user(ctx)),
        ("1-inetd-telnets", lines.INETD_TELNETS, 992, telnet_user(ctx)),
        ("1-inetd-exec-imapd", lines.exec_program(lines.INETD_EXEC, ctx.imapd), 993,
         lambda port: clients.preauth_session(port, ctx.mailbox)),
        ("1-inetd-remote-addr", lines.remote(lines.INETD_REMOTE), 993, imap_other_computer_user(ctx)),
        ("1-inetd-imaps-nocert", lines.nocert(lines.INETD_IMAPS), 993, imap_nocert_user(ctx)),
    ]
    for name, line, documented_port, user in cases:
        ctx.report.check(name, lambda: under_inetd(ctx, name, line, documented_port, user))


# -- 2: xinetd ----------------------------------------------------------------------------------------------------------

def scenario_xinetd(ctx):
    ctx.report.section("2 xinetd: service files equivalent to the inetd.conf lines (server_args = the same flags)")
    cases = [("https", lines.INETD_HTTPS, 443, https_user(ctx)),
             ("imaps", lines.INETD_IMAPS, 993, imap_user(ctx)),
             ("pop3s", lines.INETD_POP3S, 995, pop3_user(ctx)),
             ("telnets", lines.INETD_TELNETS, 992, telnet_user(ctx))]
    names = [f"2-xinetd-{service}" for service, *_ in cases]
    if not ctx.xinetd_binary:
        for name in names:
            ctx.report.check(name, lambda: raise_skip(ctx.xinetd_unavailable))
        return
    services = [superservers.xinetd_service(service, ctx.port(port), ctx.ports.moved(port), not ctx.netns,
                                            "sslwrap", sslwrap_command(ctx, line))
                for service, line, port, _ in cases]
    for _, text in services:
        ctx.report.say("#   " + " ".join(text.split()))
    all_ports = [ctx.port(port) for _, _, port, _ in cases]
    try:
        with superservers.xinetd(ctx.procs, ctx.workdir, ctx.xinetd_binary, services, all_ports):
            for name, (_, _, port, user) in zip(names, cases):
                ctx.report.check(name, lambda: user(ctx.port(port)))
    except CheckFailed as failure:
        for name in names:
            ctx.report.fail(name, f"xinetd: {failure}")


def raise_skip(reason):
    raise Skipped(reason)


# -- 3: tcpserver -------------------------------------------------------------------------------------------------------

def scenario_tcpserver(ctx):
    ctx.report.section("3 tcpserver (ucspi-tcp)")
    port = ctx.port(993)
    command = sslwrap_command(ctx, lines.INETD_IMAPS)
    ctx.report.say(f"#   tcpserver 127.0.0.1 {port} {command}")

    def check():
        with superservers.tcpserver(ctx.procs, port, command):
            return imap_user(ctx)(port)
    ctx.report.check("3-tcpserver-imaps", check)


# -- 4: systemd-style socket activation ----------------------------------------------------------------------------------

def scenario_socket_activation(ctx):
    ctx.report.section("4 systemd socket activation, Accept=yes (systemd-socket-activate --inetd -a)")
    port = ctx.port(993)
    command = sslwrap_command(ctx, lines.INETD_IMAPS)
    ctx.report.say(f"#   systemd-socket-activate --inetd -a -l 127.0.0.1:{port} {command}")

    def check():
        if not superservers.have_socket_activate():
            raise Skipped(f"{superservers.SOCKET_ACTIVATE} not found (Debian package systemd)")
        with superservers.socket_activate(ctx.procs, port, command):
            # Two sessions in a row: each connection must get its own sslwrap.
            imap_user(ctx)(port)
            return imap_user(ctx)(port) + "; twice, one sslwrap per connection"
    ctx.report.check("4-socket-activate-imaps", check)


# -- 5: daemon mode -----------------------------------------------------------------------------------------------------

CONCURRENT_SESSIONS = 20


def daemon_shell_line(ctx, line):
    line = lines.with_ports(line, ctx.ports)
    return line if ctx.netns else lines.daemon_line_loopback(line)


def scenario_daemon(ctx):
    ctx.report.section("5 daemon mode: the documented `sslwrap ... -accept PORT &` lines in a start-up script")
    cases = [("5-daemon-https", lines.DAEMON_HTTPS, 443, https_user(ctx)),
             (f"5-daemon-imaps-{CONCURRENT_SESSIONS}-concurrent", lines.DAEMON_IMAPS, 993,
              lambda port: concurrent_imap(ctx, port)),
             ("5-daemon-pop3s", lines.DAEMON_POP3S, 995, pop3_user(ctx)),
             ("5-daemon-telnets", lines.DAEMON_TELNETS, 992, telnet_user(ctx))]
    shell_lines = [daemon_shell_line(ctx, line) for _, line, _, _ in cases]
    for line in shell_lines:
        ctx.report.say(f"#   {line}")
    all_ports = [ctx.port(port) for _, _, port, _ in cases]
    try:
        with superservers.daemon_lines(ctx.procs, ctx.workdir, "daemons", shell_lines, all_ports):
            for name, _, port, user in cases:
                ctx.report.check(name, lambda: user(ctx.port(port)))
    except CheckFailed as failure:
        for name, *_ in cases:
            ctx.report.fail(name, f"daemon lines: {failure}")

    nocert_line = daemon_shell_line(ctx, lines.nocert(lines.DAEMON_IMAPS))
    ctx.report.say(f"#   {nocert_line}")

    def nocert_check():
        with superservers.daemon_lines(ctx.procs, ctx.workdir, "daemon-nocert", [nocert_line], [ctx.port(993)]):
            return imap_nocert_user(ctx)(ctx.port(993))
    ctx.report.check("5-daemon-imaps-nocert", nocert_check)


def concurrent_imap(ctx, port):
    clients.concurrent_imap_sessions(port, ctx.mailbox, clients.trusting(lines.CERT), CONCURRENT_SESSIONS)
    return f"{CONCURRENT_SESSIONS} sessions logged in at once, each fetched the planted message"


# -- 6: TLS stacks other than OpenSSL -----------------------------------------------------------------------------------

def scenario_other_tls_stacks(ctx):
    ctx.report.section("6 clients on other TLS stacks against the inetd imaps line: gnutls-cli, curl imaps://")
    conf_line = inetd_conf_line(ctx, lines.INETD_IMAPS)
    ctx.report.say(f"#   inetd.conf: {conf_line}")
    port = ctx.port(993)
    names = ["6-gnutls-cli-imaps", "6-curl-imaps"]
    try:
        with superservers.inetd(ctx.procs, ctx.workdir, "6-stacks", [conf_line], [port]):
            ctx.report.check(names[0], lambda: clients.gnutls_imap_session(port, ctx.mailbox))
            ctx.report.check(names[1], lambda: clients.curl_imap_fetch(port, ctx.mailbox, ctx.workdir))
    except CheckFailed as failure:
        for name in names:
            ctx.report.fail(name, f"inetd: {failure}")


# -- 7: legacy TLS 1.0 clients ------------------------------------------------------------------------------------------

def scenario_legacy_clients(ctx):
    ctx.report.section("7 a TLS 1.0-only client (openssl s_client -tls1 -cipher 'DEFAULT:@SECLEVEL=0')")
    cases = [("7-legacy-tls1-line-accepts", lines.extra_words(lines.INETD_IMAPS, "-tls1"), legacy_accepted),
             ("7-legacy-seclevel0-line-accepts",
              lines.extra_words(lines.INETD_IMAPS, "-cipher DEFAULT:@SECLEVEL=0"), legacy_accepted),
             ("7-legacy-default-line-refuses", lines.INETD_IMAPS, lambda ctx, port: clients.legacy_refused(port))]
    for name, line, user in cases:
        ctx.report.check(name, lambda: under_inetd(ctx, name, line, 993, lambda port: user(ctx, port)))


def legacy_accepted(ctx, port):
    mark = ctx.syslog.mark()
    detail = clients.legacy_session(port, ctx.mailbox)
    # Lowering the security level must not be silent: the warning is part of the contract (COMPAT.md).
    warned = [line for line in ctx.syslog.since(mark) if LEGACY_WARNING.search(line)]
    fail_unless(warned, "the session worked but sslwrap logged no warning about the lowered security level")
    return detail + "; warning logged"


# -- 8: testssl.sh against the documentation's default line -------------------------------------------------------------

# openbsd-inetd starts at most 256 servers of one service a minute and then stops the service for ten minutes;
# testssl.sh opens several hundred connections in that time.
SCAN_RATE_LIMIT = 4000


def scenario_testssl(ctx):
    ctx.report.section("8 testssl.sh against the documented https inetd line: nothing to fault but the test set-up")
    line = lines.rate_limited(lines.INETD_HTTPS, SCAN_RATE_LIMIT)
    ctx.report.note(f"inetd's rate limit raised for this scan only: nowait.{SCAN_RATE_LIMIT} instead of nowait")
    ctx.report.check("8-testssl-https-default-line",
                     lambda: under_inetd(ctx, "8-testssl", line, 443, lambda port: scanned(ctx, port)))


def scanned(ctx, port):
    return testssl.judge(testssl.scan(f"{clients.HOST}:{port}", ctx.workdir, "https-default-line"))
