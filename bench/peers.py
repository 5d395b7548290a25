"""`make bench-peers`: shardcast beside Centrifugo and two Python floors, one core each.

For every repetition (system order rotated each time) and every system: a
fresh topic, the server started and pinned to the server CPU, N clients
(bench/peers_fleet.py, a protocol adapter per system) subscribed to k tokens
each from Zipf(s) over M tokens; then idle memory and CPU; then a ladder of
fixed delivered rates, each one a producer run (bench/peers_producer.py, the
same records for everyone) with a warm-up, until the system falls behind
(missing > 0, duplicates, reordering, or p99 > 1 s). Kafka, the producer,
the load generator and this process share the other CPU; its busy share is
read from /proc/stat so a saturated load generator shows in the output.
Writes docs/bench/peers.{md,csv,png} and every figure as JSON under .run/bench/.

Environment: PEERS_REPS, PEERS_QUICK=1 (2,000 clients, 10k and 20k frames/s,
1 repetition), PEERS_SYSTEMS; flags override (`--help`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from bench import peers_report as rep
from bench import procstat
from bench.peers_systems import ADAPTER, LABEL, SYSTEMS, Ctx, Running, pin, skip_reason, start
from bench.run import Infra, machine, raise_fd_limit
from bench.stack import Fleet
from bench.workload import mean_subscribers, merge_hist, percentile_ms, subscription_table
from devstack.procs import ROOT


@dataclass(frozen=True)
class PeersConfig:
    systems: tuple[str, ...] = SYSTEMS
    connections: int = 10_000
    fleet_procs: int = 2
    tokens: int = 1_000
    subs: int = 5
    zipf: float = 1.0
    rates: tuple[float, ...] = tuple(rep.rate_ladder())
    warmup_s: float = 3.0
    duration_s: float = 10.0
    idle_s: float = 3.0
    reps: int = 3
    partitions: int = 6
    seed: int = 7
    pin: bool = True
    server_cpu: int = 0
    loadgen_cpu: int = 1
    latency_limit_ms: float = 1000.0
    profile: str = "full"
    out_dir: str = "docs/bench"
    notes: tuple[str, ...] = field(default=())


QUICK = PeersConfig(connections=2_000, rates=(10_000, 20_000), reps=1, warmup_s=2, duration_s=8,
                    profile="reduced")


class PeerFleet(Fleet):
    """bench.stack.Fleet's process handling for bench.peers_fleet, with on-demand snapshots."""

    def __init__(self, system: str, url: str, cfg: PeersConfig, workdir: Path,
                 cpus: set[int] | None) -> None:
        self.procs, self.status, self.outs, self.snaps = [], [], [], []
        self.workdir, self.reports = workdir, 0
        per = -(-cfg.connections // cfg.fleet_procs)
        for p in range(cfg.fleet_procs):
            first, count = p * per, min(per, cfg.connections - p * per)
            if count <= 0:
                break
            cmd = [sys.executable, "-m", "bench.peers_fleet", "--system", ADAPTER[system], "--url", url,
                   "--first", str(first), "--count", str(count), "--tokens", str(cfg.tokens),
                   "--subs", str(cfg.subs), "--zipf", str(cfg.zipf), "--seed", str(cfg.seed)]
            proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=open(workdir / f"fleet-{p}.log", "ab"),  # noqa: SIM115
                                    text=True, start_new_session=True, preexec_fn=_affinity(cpus))
            self.procs.append(proc)
            self.status.append({})
            self.snaps.append({})
            threading.Thread(target=self._read, args=(len(self.procs) - 1,), daemon=True).start()

    def _read(self, i: int) -> None:
        for line in self.procs[i].stdout:
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if "snap" in doc or "reported" in doc:
                self.snaps[i] = doc
            self.status[i] = doc

    def snap(self, n: int, timeout_s: float = 10) -> int:
        """Ticks of the current step, as every process counts them now."""
        self.tell(f"snap {n}")
        _wait(lambda: all(s.get("snap") == n for s in self.snaps), timeout_s, "fleet snapshot")
        return sum(s["ticks"] for s in self.snaps)

    def report(self, tag: str, timeout_s: float = 30) -> list[dict]:
        """Every process's counters of the current step (a fresh file name each call)."""
        self.reports += 1
        paths = [self.workdir / f"report-{self.reports}-{tag}-{i}.json" for i in range(len(self.procs))]
        for p, path in zip(self.procs, paths, strict=True):
            p.stdin.write(f"report {path}\n")
            p.stdin.flush()
        _wait(lambda: all(s.get("reported") == str(path) for s, path in zip(self.snaps, paths, strict=True)),
              timeout_s, "fleet report")
        return [json.loads(path.read_text()) for path in paths]

    def stop(self) -> None:
        self.tell("stop")
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def _affinity(cpus: set[int] | None):
    return None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))


def _wait(check, timeout_s: float, what: str, interval_s: float = 0.02) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout_s}s")
        time.sleep(interval_s)


def cpu_sample(cpu: int) -> tuple[int, int]:
    """(busy, total) jiffies of one CPU from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + v[4]  # idle + iowait
                return sum(v[:8]) - idle, sum(v[:8])
    return 0, 0


class SystemRun:
    """One system in one repetition: start, ramp, idle figures, the rate ladder, stop."""

    def __init__(self, name: str, cfg: PeersConfig, infra: Infra, rep_no: int, workdir: Path) -> None:
        self.name, self.cfg, self.infra, self.rep_no = name, cfg, infra, rep_no
        self.work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
        table = subscription_table(cfg.connections, 1, cfg.seed, cfg.tokens, cfg.zipf, cfg.subs)
        self.routed_tokens = len(table)
        self.mean_subs = mean_subscribers(table, cfg.tokens)
        self.server_cpus = {cfg.server_cpu} if cfg.pin else None
        self.loadgen_cpus = {cfg.loadgen_cpu} if cfg.pin else None
        self.sys: Running | None = None
        self.fleet: PeerFleet | None = None
        self._snap_no = 0

    def run(self) -> dict:
        out = {"system": self.name, "rep": self.rep_no, "steps": [], "error": None}
        try:
            self.sys = start(self.name, Ctx(self.infra.kafka, self.infra.redis.url, self.work,
                                            self.cfg.partitions, self.server_cpus))
            time.sleep(1.0)
            base_rss = sum(self.sys.rss_kib().values())
            out.update(self._ramp())
            _wait(lambda: self.sys.ready(self.routed_tokens), 60, "routes", 0.2)
            self._prime()
            self.fleet.tell("freeze")
            time.sleep(2.0)
            rss = self.sys.rss_kib()
            held = out["connections"]["subscribed"]
            out["rss_kib"] = rss
            out["rss_per_conn_kib"] = round((sum(rss.values()) - base_rss) / held, 2) if held else None
            cpu0, t0 = sum(self.sys.cpu_s().values()), time.monotonic()
            time.sleep(self.cfg.idle_s)
            out["idle_cores"] = round((sum(self.sys.cpu_s().values()) - cpu0) / (time.monotonic() - t0), 3)
            for i, rate in enumerate(self.cfg.rates):
                step = self._step(rate, f"{i}")
                out["steps"].append(step)
                _say(f"  {self.name} rep {self.rep_no + 1} {rep._k(rate)}/s: delivered "
                     f"{step['delivered_per_s']:,.0f}/s, {step['cpu_us_per_frame']} µs/frame, p50/p99 "
                     f"{step['p50_ms']}/{step['p99_ms']} ms, missing {step['missing']}, dups {step['dups']}, "
                     f"load-gen core {step['loadgen_core_busy']}"
                     f"{' (SATURATED)' if step['loadgen_saturated'] else ''}"
                     f"{' CLEAN' if step['clean'] else ' BEHIND'}")
                if not step["clean"] or not self.sys.alive():
                    break
        except Exception as exc:  # one failing system never stops the others
            out["error"] = f"{type(exc).__name__}: {exc}"
            _say(f"  {self.name} rep {self.rep_no + 1} failed: {out['error']} (logs: {self.work})")
        finally:
            if self.fleet is not None:
                self.fleet.kill()
            if self.sys is not None:
                self.sys.stop()
        out["highest_clean"] = rep.highest_clean(out["steps"])
        return out

    def _ramp(self) -> dict:
        self.fleet = PeerFleet(self.name, self.sys.url, self.cfg, self.work, self.loadgen_cpus)
        start_t, n = time.monotonic(), self.cfg.connections
        while True:
            f = self.fleet
            done = f.total("connected") + f.total("failed")
            settled = f.total("subscribed") + f.total("sub_failed") + f.total("closed")
            if done >= n and settled >= f.total("connected"):  # refusals are counted, not waited for
                break
            if time.monotonic() - start_t > 600:
                raise TimeoutError(f"ramp-up stalled at {done}/{n}")
            time.sleep(0.25)
        return {"connections": {"attempted": n, "connected": self.fleet.total("connected"),
                                "subscribed": self.fleet.total("subscribed"),
                                "failed": self.fleet.total("failed") + self.fleet.total("sub_failed")},
                "ramp_s": round(time.monotonic() - start_t, 2)}

    def _prime(self) -> None:
        """Low-rate ticks until clients get them: every consumer has joined its group and fetched."""
        for attempt in range(5):
            self.fleet.tell("step")
            produced = self._produce(100.0, 0.0, 2.0 + attempt, None, f"prime{attempt}")
            upper = self._upper(produced)
            self._settle(upper, quiet_s=2.0, cap_s=30)
            if self.fleet.total("ticks") >= upper * 0.5 > 0:
                return
        raise TimeoutError("no tick reached the clients while priming")

    def _upper(self, produced: dict) -> int:
        """Ticks owed to the clients that subscribed, from the fleet's subscription counts."""
        subs = merge_hist(s.get("subs", {}) for s in self.fleet.report("subs"))
        return sum(seq * subs.get(t, 0) for t, seq in produced["final_seq"].items())

    def _step(self, rate: float, tag: str) -> dict:
        cfg = self.cfg
        self.fleet.tell("step")
        records_per_s = rate / self.mean_subs
        marks: dict = {}
        produced = self._produce(records_per_s, cfg.warmup_s, cfg.duration_s, marks, tag)
        self._settle(self._upper(produced))
        results = self.fleet.report(tag)
        return self._figures(rate, records_per_s, produced, marks["a"], marks["b"], results)

    def _sample(self) -> dict:
        self._snap_no += 1
        return {"t": time.monotonic(), "ticks": self.fleet.snap(self._snap_no), "cpu": self.sys.cpu_s(),
                "fleet_cpu": sum(procstat.cpu_s(p) for p in self.fleet.pids()),
                "cpu_server": cpu_sample(self.cfg.server_cpu),
                "cpu_loadgen": cpu_sample(self.cfg.loadgen_cpu)}

    def _produce(self, rate: float, warmup_s: float, duration_s: float, marks: dict | None, tag: str) -> dict:
        out = self.work / f"producer-{tag}.json"
        cmd = [sys.executable, "-m", "bench.peers_producer", "--bootstrap", self.infra.kafka.bootstrap,
               "--topic", self.sys.topic, "--tokens", str(self.cfg.tokens), "--rate", f"{rate:.3f}",
               "--duration-s", str(duration_s), "--warmup-s", str(warmup_s), "--seed", str(self.cfg.seed),
               "--out", str(out)]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                stderr=open(self.work / "producer.log", "ab"),  # noqa: SIM115
                                preexec_fn=_affinity(self.loadgen_cpus))
        for line in proc.stdout:
            if marks is None:
                continue
            if line.strip() == "measure":  # warm-up over
                marks["a"] = self._sample()
                self.fleet.tell("mark")
            elif line.strip() == "produced" and "a" in marks:  # last record acknowledged by Kafka
                marks["b"] = self._sample()
        if proc.wait() != 0:
            raise RuntimeError(f"producer failed, see {self.work / 'producer.log'}")
        if marks is not None and "a" not in marks:
            raise RuntimeError("the producer never reached its measured phase")
        if marks is not None and "b" not in marks:
            marks["b"] = self._sample()
        return json.loads(out.read_text())

    def _settle(self, expected: int, quiet_s: float = 5.0, cap_s: float = 60.0) -> None:
        """Until every owed tick arrived, or nothing more arrives for `quiet_s`."""
        start_t = last_change = time.monotonic()
        seen = self.fleet.total("ticks")
        while seen < expected and time.monotonic() - start_t < cap_s:
            time.sleep(0.25)
            now = self.fleet.total("ticks")
            if now != seen:
                seen, last_change = now, time.monotonic()
            elif time.monotonic() - last_change > quiet_s:
                return

    def _figures(self, rate, records_per_s, produced, a, b, results) -> dict:
        hist = merge_hist(r["latency_hist_us"] for r in results)
        subs = merge_hist(r["subs"] for r in results)
        expected = sum(seq * subs.get(t, 0) for t, seq in produced["final_seq"].items())
        delivered = sum(r["ticks"] for r in results)
        wall = b["t"] - a["t"]
        frames = b["ticks"] - a["ticks"]
        cpu = {k: b["cpu"][k] - a["cpu"][k] for k in b["cpu"]}
        cpu_total = sum(cpu.values())
        server_busy = rep.busy_fraction(a["cpu_server"], b["cpu_server"])
        loadgen_busy = rep.busy_fraction(a["cpu_loadgen"], b["cpu_loadgen"])
        step = {
            "rate_target": rate, "records_per_s": round(records_per_s, 2),
            # bench.producer's own rate_achieved divides warm-up and measured records by the measured time
            "producer_rate_ratio": round(
                produced["records_measured"] / produced["elapsed_s"] / records_per_s, 3),
            "producer_errors": produced["errors"],
            "window_s": round(wall, 3), "frames_window": frames,
            "delivered_per_s": round(frames / wall, 1) if wall > 0 else 0.0,
            "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
            "cpu_us_per_frame": round(cpu_total / frames * 1e6, 2) if frames else None,
            "cpu_us_by_proc": {k: round(v / frames * 1e6, 2) if frames else None for k, v in cpu.items()},
            "server_cores": round(cpu_total / wall, 3) if wall > 0 else None,
            "fleet_cores": round((b["fleet_cpu"] - a["fleet_cpu"]) / wall, 3) if wall > 0 else None,
            "expected": expected, "delivered": delivered, "missing": expected - delivered,
            "gaps": sum(r["gaps"] for r in results), "dups": sum(r["dups"] for r in results),
            "reorders": sum(r["reorders"] for r in results),
            "errors": dict(merge_hist(r["errors"] for r in results)),
            "closed_by_server": sum(r["closed_by_server"] for r in results),
            "p50_ms": percentile_ms(hist, 0.5), "p99_ms": percentile_ms(hist, 0.99),
            "p999_ms": percentile_ms(hist, 0.999), "max_ms": percentile_ms(hist, 1.0),
            "latency_samples": sum(hist.values()),
        }
        pinned = self.cfg.pin
        step["loadgen_core_busy"] = loadgen_busy if pinned else None
        step["loadgen_saturated"] = bool(pinned and loadgen_busy is not None
                                         and loadgen_busy >= rep.SATURATED_BUSY)
        step["server_core_other"] = (round(max(0.0, server_busy - step["server_cores"]), 3)
                                     if pinned and server_busy is not None else None)
        step["clean"] = rep.step_clean(step, self.cfg.latency_limit_ms)
        return step


def _say(msg: str) -> None:
    print(msg, flush=True)


def run_all(cfg: PeersConfig, infra: Infra, workdir: Path) -> list[dict]:
    """Every repetition, the systems' order rotated each time, so drift hits all of them alike."""
    runnable = []
    for name in cfg.systems:
        why = skip_reason(name)
        if why:
            _say(why)
        else:
            runnable.append(name)
    runs = []
    for r in range(cfg.reps):
        order = runnable[r % len(runnable):] + runnable[:r % len(runnable)] if runnable else []
        _say(f"repetition {r + 1}/{cfg.reps}: {', '.join(order)}")
        for name in order:
            runs.append(SystemRun(name, cfg, infra, r, workdir).run())
    return runs


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def write_outputs(cfg: PeersConfig, runs: list[dict], meta: dict) -> dict:
    """Medians, targets; JSON under .run/bench/, and the md/csv/png under `cfg.out_dir`."""
    summary = rep.summarize(runs, cfg.rates)
    tgts = rep.targets(summary, cfg.rates)
    out_dir = ROOT / cfg.out_dir if not Path(cfg.out_dir).is_absolute() else Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "peers.csv").write_text(rep.csv_text(summary))
    (out_dir / "peers.md").write_text(rep.markdown(summary, tgts, cfg.rates, meta, LABEL, NOTES))
    png = rep.plot(summary, out_dir / "peers.png", LABEL)
    raw = (ROOT / ".run" / "bench" / f"peers-{time.strftime('%Y%m%d-%H%M%S')}.json"
           if cfg.out_dir == PeersConfig.out_dir else out_dir / "peers.json")  # a test's tmp dir, say
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps({"config": asdict(cfg), "meta": meta, "summary": summary, "targets": tgts,
                               "runs": runs}, indent=2, default=str))
    return {"summary": summary, "targets": tgts, "json": str(raw), "png": png, "out_dir": str(out_dir)}


NOTES = (
    "Fairness of the feed: one topic per system run, filled by the same producer with the same seed, so "
    "every system gets the same records (key = token, value = the tick payload every client checks). "
    "Each record also carries the token in a `centrifugo-channels` header: Centrifugo 6.9 consumes the "
    "record as-is in its Kafka *publication data mode* (value = publication data, channels from that "
    "header), so no second topic or command envelope is needed; the others ignore the header.",
    "shardcast is two processes (shard + dispatcher, plus gRPC between them) and registers in Redis; "
    "its CPU is the sum of both. Centrifugo and the floors are one process each. Redis runs on the "
    "load generator's core and is not counted.",
    "The Python floors do only the fan-out: no validation of records (shardcast checks each payload is "
    "JSON before embedding it), no auth, no bounded queues or slow-client handling (the gevent floor "
    "blocks its whole fan-out on a full socket; websockets' broadcast() buffers without limit), no "
    "metrics, no registry. They are floors, not products.",
    "Centrifugo packs several pushes into one WebSocket frame when a client has more than one queued; "
    "shardcast and the floors send one frame per tick. 'Frames' in this page means ticks delivered.",
    "Each system's ladder stops at its first unclean step; medians at a rate use the repetitions that "
    "reached it (the 'clean' column says how many of them were clean).",
    "This is a shared 2-core virtual machine: other work can run on either core during a run. The "
    "column 'other load on the server core' is that core's busy share minus the server's own CPU.",
)


def parse(argv: list[str] | None = None) -> PeersConfig:
    env = os.environ
    base = QUICK if env.get("PEERS_QUICK") == "1" else PeersConfig()
    p = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", default=env.get("PEERS_SYSTEMS", ",".join(base.systems)))
    p.add_argument("--rates", default=",".join(f"{r:g}" for r in base.rates),
                   help="delivered frames/s to step through")
    for name in ("connections", "fleet_procs", "tokens", "subs", "reps", "partitions", "seed"):
        default = int(env.get("PEERS_REPS", base.reps)) if name == "reps" else getattr(base, name)
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    for name in ("zipf", "warmup_s", "duration_s", "idle_s", "latency_limit_ms"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(base, name))
    p.add_argument("--no-pin", action="store_true", help="leave CPU placement to the OS")
    p.add_argument("--profile", default=base.profile, help="how the page labels this run")
    p.add_argument("--out-dir", default=base.out_dir)
    p.add_argument("--note", action="append", default=[], help="a caveat to print on the page")
    a = p.parse_args(argv)
    systems = tuple(s for s in a.systems.split(",") if s)
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        p.error(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    return replace(base, systems=systems, rates=tuple(float(r) for r in a.rates.split(",")),
                   pin=not a.no_pin, profile=a.profile, out_dir=a.out_dir, notes=tuple(a.note),
                   **{k: getattr(a, k) for k in ("connections", "fleet_procs", "tokens", "subs", "reps",
                                                 "partitions", "seed", "zipf", "warmup_s", "duration_s",
                                                 "idle_s", "latency_limit_ms")})


def main(argv: list[str] | None = None) -> int:
    cfg = parse(argv)
    raise_fd_limit()
    if cfg.pin and (os.cpu_count() or 1) < 2:
        _say("fewer than 2 CPUs: running without pinning")
        cfg = replace(cfg, pin=False)
    workdir = Path(tempfile.mkdtemp(prefix="shardcast-peers-"))
    load_before, started = load_average(), time.time()
    noisy = float(load_before.split()[0]) >= NOISY_LOAD
    cfg = replace(cfg, notes=caveats(cfg, load_before) + cfg.notes,
                  profile=f"{cfg.profile}, noisy" if noisy else cfg.profile)
    if cfg.pin:
        os.sched_setaffinity(0, {cfg.loadgen_cpu})  # this process and all it starts: the load-gen core
    infra = Infra(workdir)
    try:
        if cfg.pin:
            for proc in (infra.kafka.proc, infra.redis.proc):
                pin(proc.pid, {cfg.loadgen_cpu})
        runs = run_all(cfg, infra, workdir)
    finally:
        infra.stop()
    if all(not r["error"] for r in runs):
        shutil.rmtree(workdir, ignore_errors=True)  # logs and Kafka's data; kept when a run failed
    meta = _meta(cfg, load_before, started)
    out = write_outputs(cfg, runs, meta)
    for t in out["targets"]:
        _say(f"{t['verdict']:7} {t['target']}: ratio {t['ratio']} (limit {t['limit']}; {t['detail']})")
    _say(f"\nwritten: {out['out_dir']}/peers.md, peers.csv{', peers.png' if out['png'] else ''}; "
         f"JSON {out['json']}")
    return 0 if runs and not any(r["error"] for r in runs) else 1


def caveats(cfg: PeersConfig, load_before: str) -> tuple[str, ...]:
    """What makes this run's figures weaker than the issue's scenario, said on the page."""
    out = []
    full = PeersConfig()
    if (cfg.connections, cfg.rates, cfg.reps) != (full.connections, full.rates, full.reps):
        out.append(f"**Not the full scenario**: {cfg.connections:,} clients, rates "
                   f"{', '.join(rep._k(r) for r in cfg.rates)}, {cfg.reps} repetition(s) (the full one: "
                   f"{full.connections:,} clients, the ladder from {rep._k(full.rates[0])}, {full.reps} "
                   "repetitions, `make bench-peers`). RSS per connection and CPU per frame at a "
                   "given rate depend on the client count.")
    load1 = float(load_before.split()[0])
    if load1 >= NOISY_LOAD:
        out.append(f"**Noisy**: the load average was {load_before} when this run started (other work "
                   f"on this 2-core machine; {NOISY_LOAD} or more counts as busy). Pinning keeps our "
                   "processes apart, not theirs: see 'other load on the server core'.")
    if not cfg.pin:
        out.append("No CPU pinning: servers, clients and Kafka shared both cores.")
    return tuple(out)


NOISY_LOAD = 1.5


def _meta(cfg: PeersConfig, load_before: str, started: float) -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "?"
    m = machine()
    rates = ", ".join(rep._k(r) for r in cfg.rates)
    place = (f"servers pinned to CPU {cfg.server_cpu}; load generator, Kafka, Redis, producer on CPU "
             f"{cfg.loadgen_cpu}" if cfg.pin else "no CPU pinning")
    return {"profile": cfg.profile, "commit": commit, "load_before": load_before,
            "load_after": load_average(), "wall_s": round(time.time() - started), "machine": m,
            "header": [
                f"Measured {time.strftime('%Y-%m-%d %H:%M')} at commit {commit} on {m['cpus']} CPUs "
                f"({m['cpu_model']}); load average before {load_before}, after {load_average()}; "
                f"{round((time.time() - started) / 60)} min.",
                "",
                f"{cfg.connections:,} clients ({cfg.fleet_procs} load-generator processes), "
                f"{cfg.subs} tokens each from Zipf({cfg.zipf:g}) over {cfg.tokens:,}; "
                f"rates {rates} delivered frames/s, "
                f"{cfg.warmup_s:g} s warm-up + {cfg.duration_s:g} s measured each; {cfg.reps} "
                f"repetition(s), system order rotated; {place}. Command: `{_command(cfg)}`.",
                *[f"\n{n}" for n in cfg.notes]]}


def _command(cfg: PeersConfig) -> str:
    """How to run this again: the environment that shaped it, then make or the module's flags."""
    env = " ".join(f"{k}={os.environ[k]}" for k in ("PEERS_QUICK", "PEERS_REPS", "PEERS_SYSTEMS")
                   if os.environ.get(k))
    cmd = "python -m bench.peers " + " ".join(sys.argv[1:]) if sys.argv[1:] else "make bench-peers"
    return f"{env} {cmd}".strip()


if __name__ == "__main__":
    sys.exit(main())
