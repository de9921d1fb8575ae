"""Reference values for scoring's purchase propensity model (domain/propensity.rs).

From the CDNOW sample (services/corvus/tests/data/cdnow_sample_transactions.txt, 2,357
customers who first bought in 1997-01-01..1997-03-25, purchases up to 1998-06-30), one
example per customer and snapshot date: features from the purchases up to and including
the date, label "bought in the next 90 days" (a purchase in (date, date + 90 days]).
Time split, every label observable before the holdout's features are taken:

    train        1997-03-31, 1997-04-30, 1997-05-31   (labels end by 1997-08-29)
    calibration  1997-06-30                           (labels end 1997-09-28)
    holdout      1997-09-30                           (labels end 1997-12-29)

Rows are in time order, and within a snapshot in the order of a hash of snapshot and
customer (an online learner reads them in this order). Features (rounded to 4 decimals; the rounded value is the feature): recency_years,
tenure_years, log_frequency (ln(1 + purchase days)), log_monetary, log_mean_amount,
log_quantity, purchases_90d; categoricals first_month (1..3), recency_bucket, and bucketed
indicators recency_15d, purchase_days (8 = 8 or more), monetary_band and mean_band
(floor(2 ln(1 + dollars))), tenure_30d, recent_purchases (purchase days in the last 90).

The script hashes the feature names as the Rust module does (FNV-1a 64 from the offset
basis XOR the seed, then MurmurHash3's fmix64; index = low `bits` bits, sign = top bit),
so that each side builds the same sparse matrix; the JSON lists every name's (index,
sign) for the Rust test to check its own hashing against.

Reference values: scikit-learn's LogisticRegression (lbfgs, L2, C = 1 / (l2 n), intercept
unpenalised) fitted on the train split and its holdout AUC, log-loss and Brier score;
roc_auc_score, log_loss, brier_score_loss and calibration_curve on a fixed vector with
ties; _sigmoid_calibration (Platt) on a fixed vector, with a tighter solve of the same
objective by scipy. FTRL has no scikit-learn counterpart: the script transliterates
McMahan et al.'s Algorithm 1 (class Ftrl below), learns one pass over the train split in
file order, and records its holdout predictions and metrics, and scikit-learn's Platt
scaling of its logits on the calibration split.

    python3 tests/reference/propensity_sklearn.py
"""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.optimize
import sklearn
from sklearn.calibration import _sigmoid_calibration, calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
TRANSACTIONS = ROOT / "services/corvus/tests/data/cdnow_sample_transactions.txt"
OUT = ROOT / "services/scoring/tests/data"

BITS, SEED = 18, 0
L2 = 1e-3  # the Rust objective: mean log-loss + L2 / 2 * ||w||^2, intercept unpenalised
HORIZON_DAYS = 90
SPLITS = [
    ("train", "1997-03-31"),
    ("train", "1997-04-30"),
    ("train", "1997-05-31"),
    ("calibration", "1997-06-30"),
    ("holdout", "1997-09-30"),
]
NUMERIC = [
    "recency_years",
    "tenure_years",
    "log_frequency",
    "log_monetary",
    "log_mean_amount",
    "log_quantity",
    "purchases_90d",
]
CATEGORICAL = [
    "first_month",
    "recency_bucket",
    "recency_15d",
    "purchase_days",
    "monetary_band",
    "mean_band",
    "tenure_30d",
    "recent_purchases",
]
FTRL = {"alpha": 0.1, "beta": 1.0, "l1": 1.0, "l2": 1.0}
BIAS = (1 << 32) - 1

M64 = (1 << 64) - 1
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3


def fnv1a(data: bytes, state: int = FNV_OFFSET) -> int:
    for byte in data:
        state = ((state ^ byte) * FNV_PRIME) & M64
    return state


def fmix64(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & M64
    k ^= k >> 33
    k = (k * 0xC4CEB93FE53EF4F5) & M64
    k ^= k >> 33
    return k


def hash64(name: str, seed: int) -> int:
    return fmix64(fnv1a(name.encode("utf-8"), FNV_OFFSET ^ seed))


def slot(name: str, bits: int = BITS, seed: int = SEED):
    h = hash64(name, seed)
    return h & ((1 << bits) - 1), -1 if h >> 63 else 1


assert fnv1a(b"") == 0xCBF29CE484222325  # published FNV-1a 64 test vectors
assert fnv1a(b"a") == 0xAF63DC4C8601EC8C
assert fnv1a(b"foobar") == 0x85944171F73967E8


def examples() -> pd.DataFrame:
    tx = pd.read_csv(
        TRANSACTIONS, sep=r"\s+", header=None, names=["customer", "id2", "date", "cds", "amount"], dtype={"customer": str, "date": str}
    )
    tx["date"] = pd.to_datetime(tx.date, format="%Y%m%d")
    rows = []
    for split, snapshot in SPLITS:
        at = pd.Timestamp(snapshot)
        end = at + pd.Timedelta(days=HORIZON_DAYS)
        past = tx[tx.date <= at]
        future = tx[(tx.date > at) & (tx.date <= end)]
        buyers = set(future.customer)
        for customer, g in past.groupby("customer", sort=True):
            days = g.groupby("date").agg(amount=("amount", "sum"), cds=("cds", "sum"))
            first, last = days.index.min(), days.index.max()
            recency = (at - last).days
            rows.append(
                {
                    "split": split,
                    "snapshot": snapshot,
                    "customer": customer,
                    "label": int(customer in buyers),
                    "recency_years": round(recency / 365, 4),
                    "tenure_years": round((at - first).days / 365, 4),
                    "log_frequency": round(np.log1p(len(days)), 4),
                    "log_monetary": round(np.log1p(days.amount.sum()), 4),
                    "log_mean_amount": round(np.log1p(days.amount.mean()), 4),
                    "log_quantity": round(np.log1p(days.cds.sum()), 4),
                    "purchases_90d": int((days.index > at - pd.Timedelta(days=90)).sum()),
                    "first_month": str(first.month),
                    "recency_bucket": "0-30" if recency <= 30 else "31-90" if recency <= 90 else "91-180" if recency <= 180 else "181+",
                    # Bucketed indicators: what FTRL's per-coordinate rates suit best.
                    "recency_15d": str(min(recency // 15, 12)),
                    "purchase_days": str(min(len(days), 8)),
                    "monetary_band": str(min(int(2 * np.log1p(days.amount.sum())), 14)),
                    "mean_band": str(min(int(2 * np.log1p(days.amount.mean())), 12)),
                    "tenure_30d": str(min((at - first).days // 30, 12)),
                    "recent_purchases": str(min(int((days.index > at - pd.Timedelta(days=90)).sum()), 5)),
                }
            )
    # Within a snapshot, the outcomes in no particular order (customer ids follow the
    # order of acquisition, a drift an online learner would follow): by a hash of
    # snapshot and customer.
    rows.sort(key=lambda r: (r["snapshot"], hash64(f"{r['snapshot']}/{r['customer']}", 0)))
    return pd.DataFrame(rows)


def named_features(row) -> list:
    """(name, value) as the Rust builder takes them: numeric by name, categorical as
    `name=value` with value 1, zeros left out, the bias apart."""
    out = [(name, float(row[name])) for name in NUMERIC if float(row[name]) != 0.0]
    out += [(f"{name}={row[name]}", 1.0) for name in CATEGORICAL]
    return out


def hashed_rows(df: pd.DataFrame):
    """Each row as the Rust builder makes it: signed hashed (index, value) pairs sorted
    by index, colliding names summed, zeros dropped, the bias (index 2^32 - 1) last."""
    rows = []
    for _, row in df.iterrows():
        pairs = {}
        for name, value in named_features(row):
            index, sign = slot(name)
            pairs[index] = pairs.get(index, 0.0) + sign * value
        rows.append([(i, v) for i, v in sorted(pairs.items()) if v != 0.0] + [(BIAS, 1.0)])
    return rows


def dense(rows, indices):
    """The hashed rows as a dense matrix over the non-bias indices used."""
    column = {index: j for j, index in enumerate(indices)}
    X = np.zeros((len(rows), len(indices)))
    for r, pairs in enumerate(rows):
        for index, value in pairs:
            if index != BIAS:
                X[r, column[index]] = value
    return X


def sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


class Ftrl:
    """FTRL-Proximal logistic regression, McMahan et al. 2013, Algorithm 1, per
    coordinate; the bias coordinate free of L1 and L2."""

    def __init__(self, alpha, beta, l1, l2):
        self.alpha, self.beta, self.l1, self.l2 = alpha, beta, l1, l2
        self.z, self.n = {}, {}

    def weight(self, i):
        z, n = self.z.get(i, 0.0), self.n.get(i, 0.0)
        l1, l2 = (0.0, 0.0) if i == BIAS else (self.l1, self.l2)
        if abs(z) <= l1:
            return 0.0
        return -(z - math.copysign(l1, z)) / ((self.beta + math.sqrt(n)) / self.alpha + l2)

    def logit(self, x):
        return sum(self.weight(i) * v for i, v in x)

    def update(self, x, y):
        w = [self.weight(i) for i, _ in x]
        p = sigmoid(sum(wi * v for wi, (_, v) in zip(w, x)))
        for (i, v), wi in zip(x, w):
            g = (p - y) * v
            n = self.n.get(i, 0.0)
            sigma = (math.sqrt(n + g * g) - math.sqrt(n)) / self.alpha
            self.z[i] = self.z.get(i, 0.0) + g - sigma * wi
            self.n[i] = n + g * g


def ece(prob, y, bins=10):
    edges = np.linspace(0.0, 1.0, bins + 1)
    ids = np.searchsorted(edges[1:-1], prob)
    total = 0.0
    table = []
    for b in range(bins):
        mask = ids == b
        if mask.any():
            total += mask.sum() / len(prob) * abs(prob[mask].mean() - y[mask].mean())
        table.append({"count": int(mask.sum()), "mean_predicted": float(prob[mask].mean()) if mask.any() else 0.0, "observed_rate": float(y[mask].mean()) if mask.any() else 0.0})
    return total, table


def platt_tight(f, y):
    """Platt's objective (smoothed targets, P = 1 / (1 + exp(A f + B))) solved to a far
    tighter tolerance than scikit-learn's gtol 1e-6."""
    n1 = float(np.sum(y > 0))
    n0 = len(y) - n1
    t = np.where(y > 0, (n1 + 1) / (n1 + 2), 1 / (n0 + 2))

    def fun(ab):
        z = ab[0] * f + ab[1]
        loss = np.sum(np.logaddexp(0, z) - (1 - t) * z)  # -[t ln P + (1 - t) ln(1 - P)]
        d = 1 / (1 + np.exp(-z)) - (1 - t)
        return loss, np.array([d @ f, d.sum()])

    res = scipy.optimize.minimize(fun, np.array([0.0, np.log((n0 + 1) / (n1 + 1))]), jac=True, method="BFGS", options={"gtol": 1e-13})
    return res.x


def main():
    df = examples()
    columns = ["split", "snapshot", "customer", "label", *NUMERIC, *CATEGORICAL]
    df[columns].to_csv(OUT / "propensity_cdnow.csv", index=False, float_format="%.4f")
    # Read back what was written, so the reference fits exactly what the Rust test reads.
    df = pd.read_csv(OUT / "propensity_cdnow.csv", dtype={"customer": str, "first_month": str, "recency_bucket": str})

    rows = hashed_rows(df)
    names = sorted({name for _, row in df.iterrows() for name, _ in named_features(row)})
    indices = sorted({i for pairs in rows for i, _ in pairs if i != BIAS})
    X = dense(rows, indices)
    y = df.label.to_numpy()
    train = (df.split == "train").to_numpy()
    calibration = (df.split == "calibration").to_numpy()
    holdout = (df.split == "holdout").to_numpy()
    n = int(train.sum())
    C = 1.0 / (L2 * n)
    lr = LogisticRegression(C=C, solver="lbfgs", tol=1e-10, max_iter=10000).fit(X[train], y[train])
    p = lr.predict_proba(X[holdout])[:, 1]
    # The gradient of the mean objective at scikit-learn's solution (lbfgs stops on its
    # ftol test first), to read the coefficients' agreement against.
    margin = X[train] @ lr.coef_[0] + lr.intercept_[0]
    residual = (1.0 / (1.0 + np.exp(-margin)) - y[train]) / n
    gradient = np.concatenate([X[train].T @ residual + L2 * lr.coef_[0], [residual.sum()]])
    holdout_ece, holdout_table = ece(p, y[holdout])

    # FTRL: one pass over the train split in file order; Platt on its calibration logits.
    ftrl = Ftrl(**FTRL)
    for pairs, label in zip((r for r, t in zip(rows, train) if t), y[train]):
        ftrl.update(pairs, int(label))
    logits_cal = np.array([ftrl.logit(r) for r, c in zip(rows, calibration) if c])
    logits_hold = np.array([ftrl.logit(r) for r, h in zip(rows, holdout) if h])
    fa, fb = _sigmoid_calibration(logits_cal, y[calibration])
    p_ftrl = 1.0 / (1.0 + np.exp(-logits_hold))
    p_cal = 1.0 / (1.0 + np.exp(fa * logits_hold + fb))
    ftrl_ece, _ = ece(p_ftrl, y[holdout])
    cal_ece, _ = ece(p_cal, y[holdout])

    rng = np.random.default_rng(20250601)
    scores = np.round(rng.integers(0, 21, 60) * 0.05, 2)
    scores[:6] = [0.0, 1.0, 0.1, 0.3, 0.7, 0.9]  # the clipping and the bin edges
    labels = (rng.random(60) < 0.25 + 0.5 * scores).astype(int)
    prob_true, prob_pred = calibration_curve(labels, scores, n_bins=10, strategy="uniform")
    fixed_ece, fixed_table = ece(scores, labels)

    f = np.round(rng.normal(0.0, 2.0, 40), 6)
    fy = (rng.random(40) < 1 / (1 + np.exp(-(0.6 * f - 0.4)))).astype(int)
    A, B = _sigmoid_calibration(f, fy)
    A_tight, B_tight = platt_tight(f, fy)

    out = {
        "source": f"scikit-learn {sklearn.__version__}, numpy {np.__version__}; tests/reference/propensity_sklearn.py",
        "hasher": {"bits": BITS, "seed": SEED, "slots": {name: list(slot(name)) for name in names}},
        "hash_vectors": [
            {"name": name, "seed": seed, "hash": format(hash64(name, seed), "016x")}
            for name in ["", "a", "foobar", "channel=email", "log_frequency", "plan=pro ünïcødé"]
            for seed in [0, 1, 0x9E3779B97F4A7C15]
        ],
        "batch": {
            "l2": L2,
            "C": C,
            "n_train": n,
            "n_holdout": int(holdout.sum()),
            "intercept": float(lr.intercept_[0]),
            "coefficients": [[index, float(c)] for index, c in zip(indices, lr.coef_[0])],
            "iterations": int(lr.n_iter_[0]),
            "max_abs_gradient": float(np.abs(gradient).max()),
            "holdout_auc": roc_auc_score(y[holdout], p),
            "holdout_log_loss": log_loss(y[holdout], p),
            "holdout_brier": brier_score_loss(y[holdout], p),
            "holdout_ece": holdout_ece,
            "holdout_reliability": holdout_table,
            "holdout_first_probabilities": [float(v) for v in p[:20]],
        },
        "ftrl": {
            **FTRL,
            "nonzero_weights": sum(1 for i in ftrl.z if ftrl.weight(i) != 0.0),
            "coordinates": len(ftrl.z),
            "holdout_auc": roc_auc_score(y[holdout], p_ftrl),
            "holdout_log_loss": log_loss(y[holdout], p_ftrl),
            "holdout_brier": brier_score_loss(y[holdout], p_ftrl),
            "holdout_ece": ftrl_ece,
            "holdout_first_probabilities": [float(v) for v in p_ftrl[:20]],
            "platt_a": -float(fa),
            "platt_b": -float(fb),
            "calibrated_holdout_log_loss": log_loss(y[holdout], p_cal),
            "calibrated_holdout_brier": brier_score_loss(y[holdout], p_cal),
            "calibrated_holdout_ece": cal_ece,
        },
        "metrics": {
            "scores": [float(v) for v in scores],
            "labels": [int(v) for v in labels],
            "auc": roc_auc_score(labels, scores),
            "log_loss": log_loss(labels, scores),
            "brier": brier_score_loss(labels, scores),
            "calibration_curve_true": [float(v) for v in prob_true],
            "calibration_curve_pred": [float(v) for v in prob_pred],
            "reliability": fixed_table,
            "ece": fixed_ece,
        },
        "platt": {
            "logits": [float(v) for v in f],
            "labels": [int(v) for v in fy],
            # scikit-learn's P = 1 / (1 + exp(A f + B)): the Rust a = -A, b = -B.
            "sklearn_a": -float(A),
            "sklearn_b": -float(B),
            "a": -float(A_tight),
            "b": -float(B_tight),
        },
    }
    with open(OUT / "propensity_sklearn.json", "w") as fh:
        json.dump(out, fh, indent=1)
        fh.write("\n")
    print(json.dumps({k: out["batch"][k] for k in ["n_train", "n_holdout", "C", "iterations", "max_abs_gradient", "holdout_auc", "holdout_log_loss", "holdout_brier", "holdout_ece"]}))
    print(json.dumps({k: v for k, v in out["ftrl"].items() if k != "holdout_first_probabilities"}))
    print("platt sklearn", out["platt"]["sklearn_a"], out["platt"]["sklearn_b"], "tight", out["platt"]["a"], out["platt"]["b"])
    print("positive rate by snapshot", df.groupby("snapshot").label.mean().round(4).to_dict())


if __name__ == "__main__":
    main()
