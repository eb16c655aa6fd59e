#!/usr/bin/env python3
"""Warm pool benchmark on the Tart simulator: a queue of jobs at concurrency 1, cold and
with --warm-pool 1, taking turns (cold, warm, cold, warm, ...) so that both columns see the
same load on a shared machine.

Each job is prepare, one run stage (a build of --work-s seconds) and cleanup, every stage a
new process started as gitlab-runner starts it (bench.spawn). The simulated boot is
--boot-ms (10 s by default). Both columns run their VMs with Softnet (--softnet), as the
pool does by default. The pool starts empty, as after a host reboot: the first job
boots its own VM in both columns. Reported: the second job's prepare (from the call to
prepare's exit) and the wall time of the whole queue, from the first prepare's call to the
last cleanup's exit: the median and the worst of --pairs runs of each. Each run has a state
directory and a simulated Mac of its own, started empty. Called by bench/warm.sh.
"""

import argparse
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


class Queue(bench.Bench):
    def __init__(self, args, extra):
        super().__init__(args)
        self.extra = extra

    def argv(self, driver, stage, script=None, stage_name="build_script"):
        return super().argv(driver, stage, script, stage_name) + self.extra

    def driver(self, *args):
        """Runs the driver with `args` and the state dir (not this queue's options: the
        caller says which it needs). Fails loudly, so nothing is left behind unnoticed."""
        r = subprocess.run(
            [self.a.driver, *args, "--state-dir", self.state_dir],
            env=dict(self.base_env), stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed: {r.stderr}")
        return r

    def settle(self):
        """Waits for the pool's background replenishers (they outlive the stages)."""
        deadline = time.time() + 180
        while time.time() < deadline:
            out = subprocess.run(["pgrep", "-f", f"warm --background.*{self.state_dir}"],
                                 capture_output=True, text=True).stdout.strip()
            if not out:
                return
            time.sleep(0.2)

    def run_queue(self, jobs, work_script):
        prepares = []
        t0 = time.perf_counter()
        for _ in range(jobs):
            job = self.next_job()
            r = self.stage("ours", job, "prepare")
            prepares.append(r.wall)
            how = "warm" if "Claimed a warm VM" in r.err_head else "cold"
            self.stage("ours", job, "run", work_script)
            self.stage("ours", job, "cleanup")
            bench.log(f"  job {len(prepares)}: prepare {r.wall:.2f}s ({how})")
        total = time.perf_counter() - t0
        return prepares, total

    def close(self):
        self.settle()
        # Empties the pool (`--cpu 2` as the jobs had: the pool's VMs were sized with it).
        self.driver("warm", "--warm-pool", "0", "--cpu", "2")
        self.driver("gc", "--warm-pool", "0", "--cpu", "2")
        shutil.rmtree(self.tmp, ignore_errors=True)


def worst(xs):
    return max(xs)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--driver", required=True)
    p.add_argument("--tart-sim", required=True)
    p.add_argument("--boot-ms", type=int, default=10000)
    p.add_argument("--work-s", type=float, default=10.0)
    p.add_argument("--jobs", type=int, default=5)
    p.add_argument("--pairs", type=int, default=3,
                   help="runs of each column, taking turns (at least 3)")
    p.add_argument("--output", help="also write the report (markdown) to this file")
    a = p.parse_args()
    if a.pairs < 3:
        p.error("--pairs must be at least 3: a median and a worst case need several runs")
    a.driver, a.tart_sim = os.path.abspath(a.driver), os.path.abspath(a.tart_sim)
    a.floor_driver = None
    a.venv = None
    # --cpu 2: on a 2-core host, a macOS image's minimum of 2 CPUs does not fit a share of
    # the host split between a job's VM and a warm one; both columns get the same VMs.
    # --softnet in both: the pool turns Softnet on by itself (--concurrency + --warm-pool > 1)
    # while a lone cold VM runs without it; both columns run Softnet so that they compare
    # the pool alone.
    common = ["--cpu", "2", "--softnet", "--default-image", bench.IMAGE]
    columns = (("cold", common), ("warm pool 1", common + ["--warm-pool", "1"]))
    results = {name: [] for name, _ in columns}
    started = time.strftime("%Y-%m-%d %H:%M")
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                            text=True, cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    loads = []
    for turn in range(a.pairs):
        for name, extra in columns:
            q = Queue(a, extra)
            work = q._script("work", f"sleep {a.work_s}\n")
            bench.log(f"run {turn + 1}/{a.pairs}, {name}: {a.jobs} jobs, boot {a.boot_ms} ms, work {a.work_s} s")
            try:
                results[name].append(q.run_queue(a.jobs, work))
            finally:
                q.close()
            loads.append(float(open("/proc/loadavg").read().split()[0]))

    def stats(name):
        second = [prepares[1] for prepares, _ in results[name]]
        totals = [total for _, total in results[name]]
        return second, totals

    (cold_2nd, cold_q), (warm_2nd, warm_q) = stats("cold"), stats("warm pool 1")
    faster_median = 1 - bench.median(warm_q) / bench.median(cold_q)
    # Worst case of the pool against the cold runs' best: the least the pool saves.
    faster_worst = 1 - worst(warm_q) / min(cold_q)
    fmt = lambda xs, unit: f"{bench.median(xs):.2f} {unit} / {worst(xs):.2f} {unit}"
    lines = [
        f"Warm pool benchmark ({started} UTC, commit {commit or 'unknown'}, simulator, {os.cpu_count()} cores, {a.pairs} runs of each "
        f"column taking turns; load average (1 min) after each run {min(loads):.1f} to {max(loads):.1f}; "
        f"boot {a.boot_ms / 1000:.0f} s, build {a.work_s:.0f} s per job; Softnet on in both columns)",
        "",
        "| measure (median / worst) | cold | --warm-pool 1 | target |",
        "|---|---:|---:|---|",
        f"| second job's prepare | {fmt(cold_2nd, 's')} | {fmt(warm_2nd, 's')} | <= 1.5 s |",
        f"| queue of {a.jobs} jobs, concurrency 1 | {fmt(cold_q, 's')} | {fmt(warm_q, 's')} | >= 35% faster |",
        f"| queue: pool faster by | | {faster_median * 100:.0f}% (medians) / {faster_worst * 100:.0f}% (pool's worst vs cold's best) | |",
        "",
        "Every run (each job's prepare, then the queue):",
        "",
    ]
    for name, _ in columns:
        for i, (prepares, total) in enumerate(results[name]):
            lines.append(f"- {name}, run {i + 1}: prepares {', '.join(f'{x:.2f}' for x in prepares)} s; queue {total:.1f} s")
    report = "\n".join(lines) + "\n"
    print(report)
    if a.output:
        with open(a.output, "w") as f:
            f.write(report)


if __name__ == "__main__":
    main()
