"""Ray's side of `lumen bench runtime`: the same measurements as Lumen's
runtime benchmark, in the style of Ray's own `ray microbenchmark`
(ray/_private/ray_perf.py): tiny tasks, actor calls, put/get.

Prints one JSON object per line: {"test": ..., "value": ..., "unit": ...}.
Usage: python ray_micro.py [--scale S] [--workers N]
"""

import argparse
import json
import time

import numpy as np
import ray


@ray.remote
def noop():
    return 0


@ray.remote
def add(a, b):
    return a + b


@ray.remote
class Counter:
    def __init__(self):
        self.n = 0

    def incr(self, by):
        self.n += by
        return self.n


def emit(test, value, unit):
    print(json.dumps({"test": test, "value": value, "unit": unit}), flush=True)


def timed(n, body):
    start = time.perf_counter()
    body(n)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    n = lambda base: max(1, int(base * args.scale))

    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    # Warm the worker pool so startup is not measured.
    ray.get([noop.remote() for _ in range(args.workers * 4)])

    count = n(2000)
    secs = timed(count, lambda k: [ray.get(add.remote(1, 2)) for _ in range(k)])
    emit("task_sync_latency", secs / count * 1e6, "us")

    count = n(10000)
    secs = timed(count, lambda k: ray.get([noop.remote() for _ in range(k)]))
    emit("task_throughput", count / secs, "tasks/s")

    actor = Counter.remote()
    ray.get(actor.incr.remote(0))
    count = n(2000)
    secs = timed(count, lambda k: [ray.get(actor.incr.remote(1)) for _ in range(k)])
    emit("actor_call_sync_latency", secs / count * 1e6, "us")

    count = n(10000)
    secs = timed(count, lambda k: ray.get([actor.incr.remote(1) for _ in range(k)]))
    emit("actor_call_throughput", count / secs, "calls/s")

    count = n(5000)
    secs = timed(count, lambda k: [ray.get(ray.put(k)) for _ in range(k)])
    emit("put_get_small_latency", secs / count * 1e6, "us")

    big = np.ones(64 << 20, dtype=np.uint8)  # 64 MiB
    count = n(20)
    def put_get_big(k):
        for _ in range(k):
            ref = ray.put(big)
            view = ray.get(ref)
            assert view.nbytes == big.nbytes
            del ref, view
    secs = timed(count, put_get_big)
    emit("put_get_64MiB_bandwidth", count * big.nbytes / secs / 1e6, "MB/s")

    ray.shutdown()


if __name__ == "__main__":
    main()
