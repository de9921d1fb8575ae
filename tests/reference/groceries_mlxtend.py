"""Reference rules for scoring's product affinity: mlxtend 0.25.0 on the Groceries
baskets, and the time it takes, for tests and corvus-bench.

    python3 tests/reference/groceries_mlxtend.py BASKETS > services/corvus/tests/data/groceries_rules.json
    python3 tests/reference/groceries_mlxtend.py BASKETS --time [REPEATS]

Rules at support >= 0.006 and confidence >= 0.25 with one item on the right, as
(antecedents, consequent, support, confidence, lift), sorted.
"""

import json
import statistics
import sys
import time

import pandas as pd
from mlxtend.frequent_patterns import association_rules, fpgrowth
from mlxtend.preprocessing import TransactionEncoder

# Item names are kept as written: "cream cheese " ends in a space wherever it stands.
baskets = [line.rstrip("\n").split(",") for line in open(sys.argv[1]) if line.strip()]


def rules():
    encoder = TransactionEncoder()
    onehot = pd.DataFrame(encoder.fit(baskets).transform(baskets), columns=encoder.columns_)
    itemsets = fpgrowth(onehot, min_support=0.006, use_colnames=True)
    found = association_rules(itemsets, metric="confidence", min_threshold=0.25)
    return found[found.consequents.apply(len) == 1]


if "--time" in sys.argv:
    repeats = int(sys.argv[-1]) if sys.argv[-1].isdigit() else 5
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        found = rules()
        times.append(time.perf_counter() - start)
    json.dump({"seconds": statistics.median(times), "rules": int(len(found))}, sys.stdout)
else:
    found = rules()
    out = sorted(
        [
            {
                "antecedents": sorted(r.antecedents),
                "consequent": next(iter(r.consequents)),
                "support": float(r.support),
                "confidence": float(r.confidence),
                "lift": float(r.lift),
            }
            for r in found.itertuples()
        ],
        key=lambda r: (r["consequent"], r["antecedents"]),
    )
    json.dump({"source": "mlxtend 0.25.0 fpgrowth + association_rules", "min_support": 0.006, "min_confidence": 0.25, "baskets": len(baskets), "rules": out}, sys.stdout)
sys.stdout.write("\n")
