"""Times lifetimes 0.11.3 fitting BG/NBD and Gamma-Gamma on the CDNOW sample's summary
as of 1997-09-30 in weeks (the same summary scoring fits), for corvus-bench.

    python3 tests/reference/clv_fit_timing.py TRANSACTIONS [REPEATS]

Prints one JSON object: the median seconds of each fit and the parameters.
"""

import json
import statistics
import sys
import time
import warnings

import pandas as pd
from lifetimes import BetaGeoFitter, GammaGammaFitter
from lifetimes.utils import summary_data_from_transaction_data

warnings.simplefilter("ignore")
path = sys.argv[1]
repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 5
tx = pd.read_csv(path, sep=r"\s+", header=None, names=["id", "id2", "date", "cds", "value"], dtype={"id": str, "date": str})
tx["date"] = pd.to_datetime(tx.date, format="%Y%m%d")
s = summary_data_from_transaction_data(
    tx, "id", "date", monetary_value_col="value", observation_period_end="1997-09-30", freq="D", freq_multiplier=7
)
repeat = s[(s.frequency > 0) & (s.monetary_value > 0)]


def timed(fit):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model = fit()
        times.append(time.perf_counter() - start)
    return statistics.median(times), model


bg_seconds, bg = timed(lambda: BetaGeoFitter().fit(s.frequency, s.recency, s["T"]))
gg_seconds, gg = timed(lambda: GammaGammaFitter().fit(repeat.frequency, repeat.monetary_value))
json.dump(
    {
        "bg_nbd_seconds": bg_seconds,
        "gamma_gamma_seconds": gg_seconds,
        "parameters": {**bg.params_.to_dict(), **gg.params_.to_dict()},
        "customers": int(len(s)),
    },
    sys.stdout,
)
sys.stdout.write("\n")
