"""A private dovecot for the soak's STARTTLS kind: plaintext IMAP on a loopback port, everything (configuration,
state, sockets, log) under the soak's scratch directory. Started and stopped by PID through benchlib.procs.

It must never touch the host's dovecot configuration or state, and it needs root (dovecot drops to its own users).
One imap-login process serves every connection (service_count = 0): the soak measures sslwrap, not dovecot's forks.
"""

import os

from benchlib import procs

CONFIG = """# The soak's private dovecot: plaintext IMAP on loopback; TLS and STARTTLS are sslwrap's job.
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
instance_name = sslwrap-soak-{port}
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
mail_location = maildir:~/Maildir
stats_writer_socket_path =
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/passwd
}}
userdb {{
  driver = passwd-file
  args = {root}/passwd
}}
service imap-login {{
  service_count = 0
  process_min_avail = 1
  client_limit = 1000
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


def start(scratch):
    """Starts dovecot in the foreground (-F) and waits until its IMAP port listens; returns (process, port)."""
    if os.geteuid() != 0:
        raise procs.BenchError("the STARTTLS kind needs root: dovecot drops to its own users")
    root = os.path.join(scratch, "dovecot")
    os.makedirs(os.path.join(root, "state"), exist_ok=True)
    with open(os.path.join(root, "passwd"), "w") as passwd:
        passwd.write(f"soak:{{PLAIN}}unused:65534:65534::{root}/home\n")
    port = procs.free_port()
    config = os.path.join(root, "dovecot.conf")
    with open(config, "w") as out:
        out.write(CONFIG.format(root=root, port=port))
    log = os.path.join(scratch, "dovecot.stderr")
    process = procs.start(["/usr/sbin/dovecot", "-F", "-c", config], log)
    procs.wait_listening(process, port, "dovecot", log)
    return process, port
