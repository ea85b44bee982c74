"""Prints one PASS/FAIL/SKIP line per check and the closing 'N passed, N failed' line that CI reads.

Under compat-tests/run the closing line is printed by run, after its own check of the host: the suite hands its counts
over in the file named by SSLWRAP_COMPAT_TALLY (see common.sh).
"""

import traceback


class CheckFailed(Exception):
    """What a user would have seen go wrong, in one line."""


class Skipped(Exception):
    """A tool the check needs is genuinely not available on this machine."""


class Report:
    def __init__(self, syslog=None):
        self.syslog = syslog
        self.passed = 0
        self.failed = 0
        self.skipped = 0

    def say(self, text):
        # Flushed line by line so a CI log shows progress even if the run is killed.
        print(text, flush=True)

    def section(self, title):
        self.say(f"== {title}")

    def note(self, text):
        self.say(f"NOTE: {text}")

    def check(self, name, action):
        """Runs one check (a callable that raises CheckFailed/Skipped) and prints its verdict line."""
        mark = self.syslog.mark() if self.syslog else 0
        try:
            detail = action()
        except Skipped as skip:
            self.skip(name, str(skip))
        except CheckFailed as failure:
            self.fail(name, str(failure), mark)
        except Exception as error:  # a crash in the check itself must still yield a FAIL line, not end the run
            where = traceback.extract_tb(error.__traceback__)[-1]
            self.fail(name, f"{type(error).__name__}: {error} (at {where.name}:{where.lineno})", mark)
        else:
            self.passed += 1
            self.say(f"PASS {name}" + (f" ({detail})" if detail else ""))

    def fail(self, name, reason, syslog_mark=None):
        self.failed += 1
        self.say(f"FAIL {name}: {one_line(reason)}{self.syslog_hint(syslog_mark)}")

    def skip(self, name, reason):
        self.skipped += 1
        self.say(f"SKIP {name}: {one_line(reason)}")

    def syslog_hint(self, mark):
        # What sslwrap itself logged during a failed check is usually the fastest way to the cause.
        if self.syslog is None or mark is None:
            return ""
        lines = [line for line in self.syslog.since(mark) if "sslwrap" in line][-3:]
        return f" [sslwrap syslog: {' | '.join(lines)}]" if lines else ""

    def summary(self):
        line = f"{self.passed} passed, {self.failed} failed"
        return line + (f", {self.skipped} skipped" if self.skipped else "")

    def close(self, tally_path=None):
        """The closing line, or the counts for the layer that runs the suite and prints it."""
        if tally_path:
            with open(tally_path, "w", encoding="ascii") as tally:
                tally.write(f"{self.passed} {self.failed} {self.skipped}\n")
        else:
            self.say(self.summary())


def one_line(text):
    return " ".join(str(text).split())


def fail_unless(condition, reason):
    if not condition:
        raise CheckFailed(reason)
