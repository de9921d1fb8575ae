"""k-means reference for corvus-bench: scikit-learn's KMeans on 1,000,000 points of 20
features (eight overlapping Gaussian blobs, seeded), the same k and restarts.

    python3 tests/reference/kmeans_sklearn.py OUT.f64 [K] [RESTARTS]

Writes the points to OUT.f64 (row-major little-endian f64) for the bench to cluster,
and prints the seconds of the fit (median of three) and its inertia as JSON.
"""

import json
import statistics
import sys
import time

import numpy as np
from sklearn.cluster import KMeans

out = sys.argv[1]
k = int(sys.argv[2]) if len(sys.argv) > 2 else 8
restarts = int(sys.argv[3]) if len(sys.argv) > 3 else 3
rng = np.random.default_rng(7)
n, d = 1_000_000, 20
centres = rng.normal(0.0, 1.5, (8, d))
X = centres[rng.integers(0, 8, n)] + rng.normal(0.0, 1.0, (n, d))
X.astype("<f8").tofile(out)
times, inertias, iterations = [], [], []
for seed in range(3):
    start = time.perf_counter()
    km = KMeans(n_clusters=k, n_init=restarts, random_state=seed).fit(X)
    times.append(time.perf_counter() - start)
    inertias.append(float(km.inertia_))
    iterations.append(int(km.n_iter_))
json.dump({"seconds": statistics.median(times), "inertia": min(inertias), "inertias": inertias, "iterations": iterations, "n": n, "d": d}, sys.stdout)
sys.stdout.write("\n")
