"""What this machine can do at best, from `openssl speed`: the bulk cipher rate (one core, 16 KiB blocks) and the
cost of one signature, which bound throughput and CPU per handshake. The plain relay ceiling (socat) is measured
with the wrappers in the throughput phase, under the same alternation."""

import re
import subprocess

from . import procs
from .procs import BenchError

MIB = 1024 * 1024

CIPHER_COMMANDS = {
    "aes128gcm": ["openssl", "speed", "-seconds", "1", "-bytes", "16384", "-evp", "aes-128-gcm"],
    "chacha20poly1305": ["openssl", "speed", "-seconds", "1", "-bytes", "16384", "-evp", "chacha20-poly1305"],
}
SIGNATURE_COMMAND = ["openssl", "speed", "-seconds", "1", "ecdsap256", "rsa2048", "ecdhx25519"]


def _cipher_mib_s(output):
    # The result line is the algorithm name and the rate in thousands of bytes per second, e.g. "AES-128-GCM 2789599.42k".
    for line in output.splitlines():
        match = re.match(r"^\S+\s+([\d.]+)k\s*$", line.strip())
        if match:
            return float(match.group(1)) * 1000 / MIB
    raise BenchError("openssl speed printed no cipher rate")


def _signature_costs(output):
    """Microseconds per sign and verify for RSA-2048 and ECDSA P-256, and per X25519 key agreement."""
    costs = {}
    for line in output.splitlines():
        rsa = re.match(r"^rsa\s+2048 bits\s+\S+\s+\S+\s+([\d.]+)\s+([\d.]+)", line.strip())
        ecdsa = re.match(r"^256 bits ecdsa \(nistp256\)\s+\S+\s+\S+\s+([\d.]+)\s+([\d.]+)", line.strip())
        x25519 = re.match(r"^253 bits ecdh \(X25519\)\s+\S+\s+([\d.]+)", line.strip())
        if rsa:
            costs["rsa2048_sign_us"] = 1e6 / float(rsa.group(1))
            costs["rsa2048_verify_us"] = 1e6 / float(rsa.group(2))
        if ecdsa:
            costs["ecdsap256_sign_us"] = 1e6 / float(ecdsa.group(1))
            costs["ecdsap256_verify_us"] = 1e6 / float(ecdsa.group(2))
        if x25519:
            costs["x25519_derive_us"] = 1e6 / float(x25519.group(1))
    if "rsa2048_sign_us" not in costs or "ecdsap256_sign_us" not in costs:
        raise BenchError("openssl speed printed no signature rates")
    return costs


def measure(concurrently=False):
    """Runs the openssl speed commands; concurrently (smoke test) trades accuracy for time."""
    commands = dict(CIPHER_COMMANDS, signatures=SIGNATURE_COMMAND)
    if concurrently:
        outputs = _run_together(commands)
    else:
        outputs = {name: procs.run(argv, timeout=120) for name, argv in commands.items()}
    ceilings = {f"{name}_mib_s": _cipher_mib_s(outputs[name]) for name in CIPHER_COMMANDS}
    ceilings.update(_signature_costs(outputs["signatures"]))
    return ceilings


def _run_together(commands):
    running = {name: subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
               for name, argv in commands.items()}
    outputs = {}
    try:
        for name, process in running.items():
            outputs[name] = process.communicate(timeout=120)[0].decode(errors="replace")
    except subprocess.TimeoutExpired as error:
        raise BenchError("openssl speed took longer than 120 s") from error
    finally:
        for process in running.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    return outputs
