"""The soak loop for one mode: bursts of SOAK_SAMPLE_EVERY connections made by SOAK_CLIENTS threads, each burst
followed by a wait until the watched processes have no session process left, then one sample (descriptors, RSS,
children, zombies of each watched process, and the syslog lines the burst caused), judged at once.

It never stops a process (targets.py and benchlib.procs own them) and never sleeps for a fixed time: every wait
is for an event, bounded in time."""

import os
import random
import threading
import time

from benchlib import procs

from . import clients, judge

CHILDREN_GONE_LIMIT = 120.0


def _state(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            raw = stat.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the state follows its closing parenthesis.
    return raw[raw.rindex(b")") + 2:raw.rindex(b")") + 3].decode()


def read_process(pid):
    """What /proc says about one watched process: open descriptors, RSS, session processes, zombies among them."""
    rss = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    below = procs.descendants(pid)
    return {"fds": len(os.listdir(f"/proc/{pid}/fd")), "rss_kib": rss, "children": len(below),
            "zombies": sum(1 for child in below if _state(child) == "Z")}


def wait_children_gone(pids, limit=CHILDREN_GONE_LIMIT):
    """Waits until none of pids has a descendant (live or zombie) left, at most `limit` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not any(procs.descendants(pid) for pid in pids):
            return
        time.sleep(0.02)


def plan(mix, count, rng):
    """The kinds of one burst's connections, in random order: each kind its share, the rest full sessions."""
    kinds = []
    for kind, share in mix.items():
        if kind != "full":
            kinds += [kind] * int(share * count)
    kinds += ["full"] * (count - len(kinds))
    rng.shuffle(kinds)
    return kinds


class Burst:
    """One burst's connections, made by parallel worker threads; the tallies are read once they have ended."""

    def __init__(self, target, kinds, context, slow, stop_at, seed):
        self.target, self.kinds, self.context, self.slow, self.stop_at = target, kinds, context, slow, stop_at
        self.seed = seed
        self.lock = threading.Lock()
        self.next = 0
        self.made = 0
        self.time_limited = False
        self.ports = {kind: [] for kind in target.mix}
        self.problems = []

    def _take(self):
        with self.lock:
            if self.next >= len(self.kinds) or self.time_limited:
                return None
            if self.stop_at is not None and time.time() >= self.stop_at:
                self.time_limited = True
                return None
            self.next += 1
            return self.kinds[self.next - 1]

    def _work(self, number):
        rng = random.Random(self.seed * 1000 + number)
        while (kind := self._take()) is not None:
            port, problem = None, None
            try:
                if kind == "slow_handshake":
                    port = self.slow.start(self.target.ports["main"])
                else:
                    port, problem = clients.KINDS[kind](self.target.ports, self.context, rng)
            except Exception as error:  # noqa: BLE001 — whatever the client hit is the finding
                problem = f"{type(error).__name__}: {error}"
            with self.lock:
                self.made += 1
                if port is not None and problem is None:
                    self.ports[kind].append(port)
                if problem:
                    self.problems.append(f"{kind}: {problem}")

    def run(self, clients_at_once):
        workers = [threading.Thread(target=self._work, args=(n,), daemon=True) for n in range(clients_at_once)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()


def soak(target, settings, total, context, progress):
    """Runs bursts until `total` connections or SOAK_STOP_AT; returns the record of the run."""
    rng = random.Random(16)
    slow = clients.SlowHandshakes(settings.handshake_timeout + 30)
    samples, violations = [], []
    totals = {"connections": {}, "lines": {}, "expected": {}, "client_failures": 0}
    made, started, time_limited, number = 0, time.monotonic(), False, 0
    while made < total and not time_limited:
        number += 1
        try:
            made, time_limited = _burst(target, settings, total, context, rng, slow, number, made, started,
                                        samples, violations, totals, progress)
        except (procs.BenchError, OSError) as error:
            # A watched process gone, a sink that stopped answering: the run ends here, and says why.
            violations.append(f"run aborted after {made} connections: {error}")
            break
    run_violations, summary = judge.judge_run(samples, settings.rss_band_kib)
    return {"mode": target.mode, "planned": total, "reached": made, "time_limited": time_limited,
            "elapsed_s": round(time.monotonic() - started, 1), "samples": samples, "summary": summary,
            "totals": totals, "violations": violations + run_violations, "mix": target.mix}


def _burst(target, settings, total, context, rng, slow, number, made, started, samples, violations, totals,
           progress):
    """One burst, its wait and its sample; returns the connections made so far and whether time ran out."""
    burst = Burst(target, plan(target.mix, min(settings.sample_every, total - made), rng), context, slow,
                  settings.stop_at, number)
    burst.run(settings.clients)
    slow.wait_all()
    wait_children_gone(target.watched.values())
    made += burst.made
    time_limited = burst.time_limited
    sample = {"connections": made, "elapsed_s": round(time.monotonic() - started, 1),
              "processes": {label: read_process(pid) for label, pid in target.watched.items()},
              "lines": {}, "expected": {}}
    found = list(burst.problems[:5])
    if len(burst.problems) > 5:
        found.append(f"... and {len(burst.problems) - 5} more client-side failures in this burst")
    with slow.lock:
        found += slow.failures
        totals["client_failures"] += len(burst.problems) + len(slow.failures)
        slow.failures.clear()
    for label, sink in target.sinks.items():
        ports = {k: burst.ports[k] for k in target.mix if target.sink_of_kind[k] == label}
        counts, expected, wrong = judge.judge_lines(sink.lines_since_last(), ports, label)
        sample["lines"].update(counts)
        sample["expected"].update(expected)
        found += wrong
    for kind, ports in burst.ports.items():
        totals["connections"][kind] = totals["connections"].get(kind, 0) + len(ports)
    for key in ("lines", "expected"):
        for kind, count in sample[key].items():
            totals[key][kind] = totals[key].get(kind, 0) + count
    found += judge.judge_sample(sample)
    sample["violations"] = found
    samples.append(sample)
    violations += [f"burst ending at {made}: {v}" for v in found]
    progress(sample)
    return made, time_limited
