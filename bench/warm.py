#!/usr/bin/env python3
"""Warm pool benchmark on the Tart simulator: a queue of jobs at concurrency 1, cold and
with --warm-pool 1, in the same run.

Each job is prepare, one run stage (a build of --work-s seconds) and cleanup, every stage a
new process started as gitlab-runner starts it (bench.spawn). The simulated boot is
--boot-ms (10 s by default). The pool starts empty, as after a host reboot: the first job
boots its own VM in both columns. Reported: the second job's prepare (from the call to
prepare's exit) and the wall time of the whole queue, from the first prepare's call to the
last cleanup's exit. Called by bench/warm.sh.
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


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--driver", required=True)
    p.add_argument("--tart-sim", required=True)
    p.add_argument("--boot-ms", type=int, default=10000)
    p.add_argument("--work-s", type=float, default=10.0)
    p.add_argument("--jobs", type=int, default=5)
    p.add_argument("--output", help="also write the report (markdown) to this file")
    a = p.parse_args()
    a.driver, a.tart_sim = os.path.abspath(a.driver), os.path.abspath(a.tart_sim)
    a.floor_driver = None
    a.venv = None
    # --cpu 2: on a 2-core host, a macOS image's minimum of 2 CPUs does not fit a share of
    # the host split between a job's VM and a warm one; both columns get the same VMs.
    common = ["--cpu", "2", "--default-image", bench.IMAGE]
    results = {}
    for name, extra in (("cold", common), ("warm pool 1", common + ["--warm-pool", "1"])):
        q = Queue(a, extra)
        work = q._script("work", f"sleep {a.work_s}\n")
        bench.log(f"{name}: {a.jobs} jobs, boot {a.boot_ms} ms, work {a.work_s} s")
        try:
            results[name] = q.run_queue(a.jobs, work)
        finally:
            q.close()
    (cold_p, cold_t), (warm_p, warm_t) = results["cold"], results["warm pool 1"]
    load = open("/proc/loadavg").read().split()[:3]
    lines = [
        f"Warm pool benchmark ({time.strftime('%Y-%m-%d %H:%M')} UTC, simulator, {os.cpu_count()} cores, "
        f"load average {' '.join(load)} at the end; boot {a.boot_ms / 1000:.0f} s, build {a.work_s:.0f} s per job)",
        "",
        "| | cold | --warm-pool 1 |",
        "|---|---|---|",
        f"| second job's prepare | {cold_p[1]:.2f} s | {warm_p[1]:.2f} s |",
        f"| every job's prepare | {', '.join(f'{x:.1f}' for x in cold_p)} s | {', '.join(f'{x:.1f}' for x in warm_p)} s |",
        f"| queue of {a.jobs} jobs, concurrency 1 | {cold_t:.1f} s | {warm_t:.1f} s ({(1 - warm_t / cold_t) * 100:.0f}% faster) |",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if a.output:
        with open(a.output, "w") as f:
            f.write(report)


if __name__ == "__main__":
    main()
