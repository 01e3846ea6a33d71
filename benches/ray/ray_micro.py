"""Ray's side of `lumen bench core` (alias `lumen bench runtime`): the rows of
Ray's own `ray microbenchmark` that apply to Lumen, with Ray's definitions.

Why not run `ray microbenchmark` itself: `ray._private.ray_perf.main()` runs
every row (about 30, plus placement groups and the Ray Client benchmark,
each after a 10 s sleep: tens of minutes), its only filter is one substring
(`TESTS_TO_RUN`), which cannot select these rows and no others, and it calls
`ray.init()` with no way to set `num_cpus`. So this script copies the
bodies of the chosen rows from `ray/_private/ray_perf.py` (Ray 2.60.0)
verbatim (the remote functions and actors too) and times them with Ray's
own `timeit` (`ray/_private/ray_microbenchmark_helpers.py`: 1 s warm-up,
then 4 windows of 2 s, mean and standard deviation of the rate), called
with `warmup_time_sec=0` instead of its 10 s "noisy neighbour" sleep.

Differences from `ray_perf.py`, each also made on Lumen's side:
- `ray.init(num_cpus=--workers)` (Lumen runs as many worker processes).
- "single client put gigabytes" puts a 1 GiB array (`ray_perf.py`: 800
  MiB with a multiplier of 0.8); the rate is in GiB/s.
- The number of actors of the 1:n and n:n rows is `--actors` (Ray:
  `cpu_count() // 2`, which the caller passes; at least 1).
- `--scale` below 1 (smoke runs) shrinks the timing windows and the batch
  sizes by that factor (then Ray's `timeit` is replaced by the same loop
  with shorter windows).

Prints one JSON object per row: {"test", "value", "sd", "unit"}.
Usage: python ray_micro.py [--scale S] [--workers N] [--actors N]
"""

import argparse
import json
import time

import numpy as np
import ray
from ray._private.ray_microbenchmark_helpers import timeit as ray_timeit


# ---- Verbatim from ray/_private/ray_perf.py (Ray 2.60.0) -------------------


@ray.remote(num_cpus=0)
class Actor:
    def small_value(self):
        return b"ok"

    def small_value_arg(self, x):
        return b"ok"

    def small_value_batch(self, n):
        ray.get([small_value.remote() for _ in range(n)])


@ray.remote(num_cpus=0)
class Client:
    def __init__(self, servers):
        if not isinstance(servers, list):
            servers = [servers]
        self.servers = servers

    def small_value_batch(self, n):
        results = []
        for s in self.servers:
            results.extend([s.small_value.remote() for _ in range(n)])
        ray.get(results)

    def small_value_batch_arg(self, n):
        x = ray.put(0)
        results = []
        for s in self.servers:
            results.extend([s.small_value_arg.remote(x) for _ in range(n)])
        ray.get(results)


@ray.remote
def small_value():
    return b"ok"


# ---- End of the verbatim part ----------------------------------------------


SCALE = 1.0


def timeit(name, fn, multiplier=1):
    """Ray's `timeit` (no sleep); below scale 1 the same loop, shorter."""
    if SCALE >= 1.0:
        return ray_timeit(name, fn, multiplier, warmup_time_sec=0)
    warmup, window = 1.0 * SCALE, 2.0 * SCALE
    start = time.perf_counter()
    count = 0
    while time.perf_counter() - start < warmup:
        fn()
        count += 1
    step = count // 10 + 1
    stats = []
    for _ in range(4):
        start = time.perf_counter()
        count = 0
        while time.perf_counter() - start < window:
            for _ in range(step):
                fn()
            count += step
        end = time.perf_counter()
        stats.append(multiplier * count / (end - start))
    return [(name, float(np.mean(stats)), float(np.std(stats)))]


def emit(results, unit):
    for name, mean, sd in results:
        print(
            json.dumps({"test": name, "value": mean, "sd": sd, "unit": unit}),
            flush=True,
        )


def main():
    global SCALE
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--actors", type=int, default=1)
    args = parser.parse_args()
    SCALE = args.scale
    shrink = min(1.0, args.scale)

    def count(base):
        return max(10, int(base * shrink))

    batch = count(1000)  # ray_perf.py's 1000-element batches
    n = count(5000)  # ray_perf.py's n of the 1:n and n:n rows
    m = 4  # ray_perf.py's m (caller tasks of n:n)
    n_cpu = max(1, args.actors)

    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    # Start the worker pool so process start-up is not in the first row.
    ray.get([small_value.remote() for _ in range(args.workers * 4)])

    # Same order as ray_perf.py.
    value = ray.put(0)

    def get_small():
        ray.get(value)

    def put_small():
        ray.put(0)

    emit(timeit("single client get calls", get_small), "gets/s")
    emit(timeit("single client put calls", put_small), "puts/s")

    arr = np.zeros(128 * 1024 * 1024, dtype=np.int64)  # 1 GiB

    def put_large():
        ray.put(arr)

    emit(timeit("single client put gigabytes", put_large, 1.0), "GiB/s")
    del arr

    def small_value_batch():
        submitted = [small_value.remote() for _ in range(batch)]
        ray.get(submitted)
        return 0

    emit(timeit("single client tasks and get batch", small_value_batch), "batches/s")

    def wait_multiple_refs():
        num_objs = batch
        not_ready = [small_value.remote() for _ in range(num_objs)]
        fetch_local = True
        for _ in range(num_objs):
            _ready, not_ready = ray.wait(not_ready, fetch_local=fetch_local)
            if fetch_local:
                fetch_local = False

    emit(timeit("single client wait 1k refs", wait_multiple_refs), "rounds/s")

    def small_task():
        ray.get(small_value.remote())

    emit(timeit("single client tasks sync", small_task), "tasks/s")

    def small_task_async():
        ray.get([small_value.remote() for _ in range(batch)])

    emit(timeit("single client tasks async", small_task_async, batch), "tasks/s")

    a = Actor.remote()

    def actor_sync():
        ray.get(a.small_value.remote())

    emit(timeit("1:1 actor calls sync", actor_sync), "calls/s")

    a = Actor.remote()

    def actor_async():
        ray.get([a.small_value.remote() for _ in range(batch)])

    emit(timeit("1:1 actor calls async", actor_async, batch), "calls/s")

    actors = [Actor._remote() for _ in range(n_cpu)]
    client = Client.remote(actors)

    def actor_async_direct():
        ray.get(client.small_value_batch.remote(n))

    emit(timeit("1:n actor calls async", actor_async_direct, n * len(actors)), "calls/s")

    a = [Actor.remote() for _ in range(n_cpu)]

    @ray.remote
    def work(actors):
        ray.get([actors[i % n_cpu].small_value.remote() for i in range(n)])

    def actor_multi2():
        ray.get([work.remote(a) for _ in range(m)])

    emit(timeit("n:n actor calls async", actor_multi2, m * n), "calls/s")

    ray.shutdown()


if __name__ == "__main__":
    main()
