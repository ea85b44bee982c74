"""The deployment lines of the sslwrap 2.0.6 documentation, verbatim, and the few edits this test host forces on them.

Edits are made only when needed and are announced by the caller: a busy well-known port gets a free one, the remote
example address 123.45.67.89 becomes 127.0.0.2 (the 'other computer' on loopback), and so on. Nothing else changes.
"""

import random
import re
import socket

SSLWRAP = "/usr/local/sbin/sslwrap"
CERT_DIR = "/usr/local/ssl/certs"
CERT = f"{CERT_DIR}/server.pem"
IMAPD_WRAPPER = "/usr/local/sbin/imapd"
DOC_REMOTE_ADDR = "123.45.67.89"
OTHER_COMPUTER = "127.0.0.2"

# inetd.conf lines, as printed in the documentation (COMPAT.md keeps them one per line).
INETD_HTTPS = "https   stream tcp nowait sslwrap /usr/sbin/tcpd /usr/local/sbin/sslwrap -cert /usr/local/ssl/certs/server.pem -port 80"
INETD_IMAPS = "imaps   stream tcp nowait sslwrap /usr/sbin/tcpd /usr/local/sbin/sslwrap -cert /usr/local/ssl/certs/server.pem -port 143"
INETD_TELNETS = "telnets stream tcp nowait sslwrap /usr/sbin/tcpd /usr/local/sbin/sslwrap -cert /usr/local/ssl/certs/server.pem -port 23"
INETD_POP3S = "pop3s   stream tcp nowait sslwrap /usr/sbin/tcpd /usr/local/sbin/sslwrap -cert /usr/local/ssl/certs/server.pem -port 110"
INETD_EXEC = "imaps   stream tcp nowait root    /usr/sbin/tcpd /usr/local/sbin/sslwrap -cert /usr/local/ssl/certs/server.pem -exec /usr/local/sbin/imapd"
INETD_REMOTE = "imaps   stream tcp nowait sslwrap /usr/sbin/tcpd /usr/local/sbin/sslwrap -cert /usr/local/ssl/certs/server.pem -port 143 -addr 123.45.67.89"

# Daemon-mode lines ("type in commands like this, or add them to rc.inet2").
DAEMON_HTTPS = "/usr/local/sbin/sslwrap -cert /usr/local/ssl/certs/server.pem -port 80 -accept 443 &"
DAEMON_IMAPS = "/usr/local/sbin/sslwrap -cert /usr/local/ssl/certs/server.pem -port 143 -accept 993 &"
DAEMON_TELNETS = "/usr/local/sbin/sslwrap -cert /usr/local/ssl/certs/server.pem -port 23 -accept 992 &"
DAEMON_POP3S = "/usr/local/sbin/sslwrap -cert /usr/local/ssl/certs/server.pem -port 110 -accept 995 &"

WELL_KNOWN = {"https": 443, "imaps": 993, "pop3s": 995, "telnets": 992}
BACKEND_PORTS = {"http": 80, "imap": 143, "pop3": 110, "telnet": 23}

# Free alternatives are drawn from here: below the kernel's ephemeral range, so no client socket takes them meanwhile.
ALTERNATIVE_RANGE = (20000, 29999)


class PortPlan:
    """The documentation's port numbers, each mapped to itself when free here, else to a free alternative."""

    def __init__(self, addresses):
        self.addresses = addresses
        self.actual = {}
        self.notes = []

    def choose(self, label, preferred):
        if port_is_free(preferred, self.addresses):
            self.actual[preferred] = preferred
        else:
            alternative = free_port(self.addresses, taken=set(self.actual.values()))
            self.actual[preferred] = alternative
            self.notes.append(f"port {preferred} ({label}) is taken on this host: using {alternative} instead")
        return self.actual[preferred]

    def __getitem__(self, documented):
        return self.actual[documented]

    def moved(self, documented):
        return self.actual[documented] != documented


def port_is_free(port, addresses):
    for address in addresses:
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError:
            return False
        finally:
            probe.close()
    return True


def free_port(addresses, taken):
    candidates = list(range(*ALTERNATIVE_RANGE))
    random.shuffle(candidates)
    for port in candidates:
        if port not in taken and port_is_free(port, addresses):
            return port
    raise RuntimeError("no free TCP port found for the test")


def with_ports(line, ports):
    """Rewrites the numbers after -port and -accept only where the plan had to move them."""
    def replace(match):
        return f"{match.group(1)} {ports[int(match.group(2))]}"
    return re.sub(r"(-port|-accept) (\d+)\b", replace, line)


def inetd_line(line, ports, bind_loopback):
    """An inetd.conf line: service field moved to a number only if its port is taken, sslwrap words as per plan."""
    service, rest = line.split(None, 1)
    documented = WELL_KNOWN[service]
    field = str(ports[documented]) if ports.moved(documented) else service
    if bind_loopback:
        # Outside a private network namespace, inetd's own address prefix keeps the listener on loopback.
        field = f"127.0.0.1:{field}"
    if field == service:
        return with_ports(line, ports)  # spacing untouched: the line stays byte for byte the documented one
    return f"{field} {with_ports(rest, ports)}"


def nocert(line):
    return line.replace(f"-cert {CERT}", "-nocert")


def remote(line):
    return line.replace(f"-addr {DOC_REMOTE_ADDR}", f"-addr {OTHER_COMPUTER}")


def exec_program(line, program):
    return line.replace(f"-exec {IMAPD_WRAPPER}", f"-exec {program}")


def extra_words(line, words):
    return f"{line} {words}"


def rate_limited(line, per_minute):
    """The inetd.conf line with openbsd-inetd's limit of servers started a minute raised (nowait.N)."""
    return re.sub(r"\bnowait\b", f"nowait.{per_minute}", line, count=1)


def sslwrap_words(line):
    """The sslwrap command line inside an inetd line (argv from the program path on), for xinetd and friends."""
    return line[line.index(SSLWRAP):]


def daemon_line_loopback(line):
    """Outside a private namespace, '-accept PORT' (all addresses) becomes '-accept 127.0.0.1:PORT'."""
    return re.sub(r"-accept (\d+)\b", lambda m: f"-accept 127.0.0.1:{m.group(1)}", line)
