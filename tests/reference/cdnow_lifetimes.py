"""Reference values for scoring's CLV model: lifetimes 0.11.3 on the CDNOW sample.

The summary is computed from the transactions as of 1997-09-30 in weeks, exactly
(days / 7, repeat purchases counted per day), as scoring computes it from the events it
receives; the paper's summary (../shared/data/cdnow_summary.csv) rounds t_x and T to
two decimals, which moves the parameters in the fifth digit.

    python3 tests/reference/cdnow_lifetimes.py > services/corvus/tests/data/cdnow_lifetimes.json
"""

import json
import sys
from pathlib import Path

import pandas as pd
from lifetimes import BetaGeoFitter, GammaGammaFitter
from lifetimes.utils import summary_data_from_transaction_data

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "services/corvus/tests/data/cdnow_sample_transactions.txt"

tx = pd.read_csv(DATA, sep=r"\s+", header=None, names=["id", "id2", "date", "cds", "value"], dtype={"id": str, "date": str})
tx["date"] = pd.to_datetime(tx.date, format="%Y%m%d")
s = summary_data_from_transaction_data(
    tx, "id", "date", monetary_value_col="value", observation_period_end="1997-09-30", freq="D", freq_multiplier=7
)
bg = BetaGeoFitter()
bg.fit(s.frequency, s.recency, s["T"])
repeat = s[(s.frequency > 0) & (s.monetary_value > 0)]
gg = GammaGammaFitter()
gg.fit(repeat.frequency, repeat.monetary_value)

p_alive = list(bg.conditional_probability_alive(s.frequency, s.recency, s["T"]))
purchases = list(bg.conditional_expected_number_of_purchases_up_to_time(39, s.frequency, s.recency, s["T"]))
spend = list(gg.conditional_expected_average_profit(s.frequency, s.monetary_value))
clv = list(gg.customer_lifetime_value(bg, s.frequency, s.recency, s["T"], s.monetary_value, time=12, discount_rate=0.01, freq="W"))

out = {
    "source": "lifetimes 0.11.3 (BetaGeoFitter, GammaGammaFitter), summary as of 1997-09-30 in weeks",
    "parameters": {**bg.params_.to_dict(), **gg.params_.to_dict()},
    "customers": int(len(s)),
    "repeat_buyers": int(len(repeat)),
    "horizon_weeks": 39,
    "clv_months": 12,
    "discount_rate": 0.01,
    "predictions": {
        cid: {
            "frequency": float(s.frequency.iloc[i]),
            "recency": float(s.recency.iloc[i]),
            "age": float(s["T"].iloc[i]),
            "monetary_value": float(s.monetary_value.iloc[i]),
            "p_alive": float(p_alive[i]),
            "expected_purchases": float(purchases[i]),
            "expected_spend": float(spend[i]),
            "clv": float(clv[i]),
        }
        for i, cid in enumerate(s.index)
    },
}
json.dump(out, sys.stdout, sort_keys=True)
sys.stdout.write("\n")
