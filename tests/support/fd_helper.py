#!/usr/bin/python3
"""The `-fd N` helper of sslwrap's privilege tests, in the role of the seed setup's socketpair helper: started by
the inetd stand-in with the client connection on fds 0/1/2, it makes a socketpair, puts one end on fd 3, and starts
sslwrap (argv[1:], which must say `-fd 3`) with it. The other end is served here as the plaintext service: a
greeting, then every line echoed back with a prefix, so the test can tell the data really went through fd 3. Exits
with sslwrap's exit status.

Python does the fd juggling because std::process::Command cannot place a descriptor at a chosen number without
unsafe code, and a shell cannot create a socketpair."""

import ctypes
import os
import signal
import socket
import sys

GREETING = b"helper on fd 3 ready\n"
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def main():
    # Under a superserver fd 3 is usually free, and the socketpair would land on it, to be overwritten by the dup2
    # below: hold it with a placeholder (not inheritable, as os.open makes it) that the dup2 then replaces.
    os.open(os.devnull, os.O_RDONLY)
    ours, theirs = socket.socketpair()
    os.dup2(theirs.fileno(), 3)  # dup2 leaves fd 3 inheritable
    pid = os.fork()
    if pid == 0:
        ours.close()
        theirs.close()
        # Should the test kill this helper, sslwrap must not live on as an orphan: SIGTERM it when we die.
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        os.execv(sys.argv[1], sys.argv[1:])
    theirs.close()
    os.close(3)
    # The client connection belongs to sslwrap now: holding fds 0-2 here would keep it open after sslwrap closes it.
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    ours.settimeout(60)
    try:
        ours.sendall(GREETING)
        for line in ours.makefile("rb"):
            ours.sendall(b"helper got: " + line)
    except OSError:
        pass
    ours.close()
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
