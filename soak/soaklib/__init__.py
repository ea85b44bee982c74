"""soaklib: the pieces of soak/run (issue 16): settings, the syslog sink, the plaintext backend, the kinds of
client, the burst loop with its judgement, and the report. Never imported by anything outside soak/."""
