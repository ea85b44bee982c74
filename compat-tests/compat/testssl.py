"""testssl.sh (Debian package testssl.sh) against a line the suite serves, judged from its JSON findings.

A scan passes only if testssl.sh really looked (its cipher order, cipher category and CBC checks are all in the
output) and reported nothing of severity LOW or above apart from what the suite's own set-up must cause: the
self-signed test certificate and the test web server's missing HTTP security headers. It must never pass a scan that
did not run, and never contact anything but the loopback address it is given (no DNS, no OCSP or CRL fetches).
"""

import json
import os

from .procs import run, tail_text
from .report import CheckFailed, fail_unless

TESTSSL = "/usr/bin/testssl"
# testssl.sh's own checks open hundreds of connections; under the loaded machine a whole scan takes one to two
# minutes.
SCAN_TIMEOUT = 360
SEVERE = {"LOW", "MEDIUM", "HIGH", "CRITICAL"}
# Every check of a default run except the client simulations, which only print which client would get what (INFO),
# and no DNS lookup: the private network namespace has no resolver.
SCAN_OPTIONS = ["--quiet", "--color", "0", "--warnings", "off", "--nodns", "none", "--protocols", "--std", "--fs",
                "--server-preference", "--server-defaults", "--headers", "--vulnerable"]

# Findings that the test set-up causes, not sslwrap's TLS policy: each is allowed, and only these.
ALLOWED = {
    # The certificate is self-signed, made exactly as the 2.0.6 documentation makes it.
    "cert_chain_of_trust": "the documented certificate is self-signed",
    # Its only name is the common name localhost, and the scan connects to 127.0.0.1.
    "cert_trust": "the documented certificate names localhost, the scan asks for 127.0.0.1",
    # `openssl req` as documented adds no subjectAltName.
    "cert_subjectAltName": "the documented certificate has no subjectAltName",
    # A self-signed certificate has no CRL or OCSP address.
    "cert_revocation": "a self-signed certificate names no CRL or OCSP URI",
    # nginx behind the https line sends no Strict-Transport-Security or other security headers: HTTP's business.
    "HSTS": "the test nginx sends no Strict-Transport-Security header",
    "security_headers": "the test nginx sends no security headers",
}
# What the scan must have looked at, so that a scan that did not run cannot pass: the server's cipher order, the
# "average" cipher category and the CBC padding oracle (the three findings of the code before the policy).
MUST_BE_REPORTED = ("cipher_order", "cipherlist_AVERAGE", "LUCKY13")


def scan(target, workdir, name):
    """Runs testssl.sh against TARGET (host:port) and returns its findings, a list of dicts."""
    json_path = os.path.join(workdir, f"testssl-{name}.json")
    if os.path.exists(json_path):
        os.remove(json_path)  # testssl.sh refuses to write over an existing file
    status, said = run([TESTSSL, *SCAN_OPTIONS, "--jsonfile", json_path, target], timeout=SCAN_TIMEOUT)
    try:
        with open(json_path, encoding="utf-8") as findings:
            return json.load(findings)
    except (OSError, ValueError) as error:
        raise CheckFailed(f"testssl.sh exited {status} without readable JSON ({error}): {tail_text(said)}") from None


def judge(findings):
    """The check's verdict on a scan: raises CheckFailed naming each finding that is not allowed."""
    by_id = {finding.get("id"): finding for finding in findings}
    missing = [finding_id for finding_id in MUST_BE_REPORTED if finding_id not in by_id]
    fail_unless(not missing, f"testssl.sh did not report {missing}: the scan did not run its checks")
    fatal = [describe(finding) for finding in findings if finding.get("severity") == "FATAL"]
    fail_unless(not fatal, f"testssl.sh could not scan: {'; '.join(fatal)}")
    faults = [describe(finding) for finding in findings
              if finding.get("severity") in SEVERE and finding.get("id") not in ALLOWED]
    fail_unless(not faults, f"testssl.sh found: {'; '.join(faults)}")
    allowed = sorted({finding["id"] for finding in findings
                      if finding.get("severity") in SEVERE and finding.get("id") in ALLOWED})
    return (f"{len(findings)} findings, none of severity LOW or above except the test set-up's ({', '.join(allowed)}); "
            f"cipher_order: {by_id['cipher_order'].get('finding')}, LUCKY13: {by_id['LUCKY13'].get('finding')}")


def describe(finding):
    return f"{finding.get('id')} ({finding.get('severity')}): {finding.get('finding')}"
