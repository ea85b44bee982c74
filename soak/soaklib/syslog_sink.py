#!/usr/bin/python3
"""The soak's private syslog receiver, run as a process of its own: binds a Unix datagram socket and appends
every datagram it receives to a file, one line each, flushed at once.

It runs apart from the driver so that the driver's client threads never delay reading (sslwrap drops a message
that waits more than 20 ms for room). It must never filter, reorder or drop a message: the soak counts them.
Usage: syslog_sink.py SOCKET OUTPUT
"""

import os
import socket
import sys


def main():
    path, output = sys.argv[1], sys.argv[2]
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    # A bigger buffer only helps against bursts of large datagrams; the queue length limit still applies.
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    receiver.bind(path)
    os.chmod(path, 0o666)
    with open(output, "ab", buffering=0) as out:
        while True:
            datagram = receiver.recv(65536)
            out.write(datagram.replace(b"\n", b" ").rstrip(b"\0") + b"\n")


if __name__ == "__main__":
    main()
