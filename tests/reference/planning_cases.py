"""Reference values for measurement's experiment planning (`src/planning.rs`): the
people per arm, in total and the days an experiment needs to detect an MDE, and the MDE
a number of people or days can detect, computed with statsmodels' power solver.

    pip install statsmodels==0.15.0
    python3 tests/reference/planning_cases.py services/measurement/tests/data/planning/cases.json

The convention is the unpooled normal approximation: the variance under the alternative
in both terms (p_a(1 - p_a) and p_b(1 - p_b) for a rate), ignoring the far tail of the
two-sided test. statsmodels' `NormalIndPower` computes exactly that power with
`alternative="larger"` at alpha / 2: Phi(d * sqrt(n) - z_{1-alpha/2}) with
n = 1 / (1/nobs1 + 1/nobs2). Arm b of the comparison is statsmodels' nobs1, the baseline
a its nobs2 = ratio * nobs1 with ratio = w_a / w_b, so the standardised effect is
d = delta / sqrt((ratio * var_b + var_a) / (1 + ratio)). statsmodels solves for nobs1
by root-finding; the MDE (whose variance, for a rate, moves with the effect) is found with
scipy's brentq on statsmodels' power, as its own solve for the effect size stops short. The rest (the binding comparison, the
rounding, the days) is arithmetic, written out below as `planning.rs` documents it.
"""

import json
import math
import sys

import statsmodels
from scipy.optimize import brentq
from statsmodels.stats.power import NormalIndPower

SOLVER = NormalIndPower()

# Each case: the plan as `planning::Plan` deserialises it, the MDE to size for, and the
# budgets to find the detectable MDE of.
CASES = [
    {
        "name": "binomial_10pct_relative_5pct_equal",
        "plan": {"metric": {"type": "binomial", "rate": 0.10}, "weights": [0.5, 0.5],
                 "alpha": 0.05, "power": 0.8, "daily_traffic": 20000.0},
        "mde": 0.05,
        "budgets": [{"days": 7}, {"people": 100000}],
    },
    {
        "name": "binomial_3pct_absolute_holdout_two_arms_bonferroni",
        "plan": {"metric": {"type": "binomial", "rate": 0.03}, "weights": [0.1, 0.45, 0.45],
                 "absolute": True, "alpha": 0.05, "power": 0.8, "bonferroni": True,
                 "daily_traffic": 5000.0},
        "mde": 0.005,
        "budgets": [{"days": 30}, {"people": 250000}],
    },
    {
        "name": "binomial_20pct_relative_10pct_unequal_alpha_10",
        "plan": {"metric": {"type": "binomial", "rate": 0.2}, "weights": [0.2, 0.8],
                 "alpha": 0.1, "power": 0.9},
        "mde": 0.1,
        "budgets": [{"people": 20000}],
    },
    {
        "name": "binomial_half_relative_2pct_three_unequal_arms_bonferroni",
        "plan": {"metric": {"type": "binomial", "rate": 0.5}, "weights": [0.3, 0.2, 0.5],
                 "alpha": 0.1, "power": 0.9, "bonferroni": True, "daily_traffic": 3000.0},
        "mde": 0.02,
        "budgets": [{"days": 14}, {"people": 50000}],
    },
    {
        "name": "revenue_relative_5pct_equal_power_90",
        "plan": {"metric": {"type": "count", "mean": 12.5, "stddev": 30.0}, "weights": [0.5, 0.5],
                 "alpha": 0.05, "power": 0.9, "daily_traffic": 8000.0},
        "mde": 0.05,
        "budgets": [{"days": 10}, {"people": 400000}],
    },
    {
        # Mean 3.2 and variance 9: stddev 3.
        "name": "count_variance_9_absolute_three_unequal_arms_alpha_10",
        "plan": {"metric": {"type": "count", "mean": 3.2, "stddev": 3.0}, "weights": [0.4, 0.35, 0.25],
                 "absolute": True, "alpha": 0.1, "power": 0.8, "daily_traffic": 1500.0},
        "mde": 0.25,
        "budgets": [{"days": 3}, {"people": 9000}],
    },
    {
        "name": "revenue_relative_2pct_holdout_two_arms",
        "plan": {"metric": {"type": "count", "mean": 50.0, "stddev": 120.0}, "weights": [0.1, 0.45, 0.45],
                 "alpha": 0.05, "power": 0.8, "daily_traffic": 100000.0},
        "mde": 0.02,
        "budgets": [{"days": 21}, {"people": 1000000}],
    },
    {
        "name": "count_absolute_unequal_power_90",
        "plan": {"metric": {"type": "count", "mean": 1.0, "stddev": 2.5}, "weights": [0.3, 0.7],
                 "absolute": True, "alpha": 0.05, "power": 0.9, "daily_traffic": 1234.5},
        "mde": 0.1,
        "budgets": [{"days": 5}, {"people": 12345}],
    },
]


def variances(metric, effect):
    """The per-person variances of the baseline arm and of an arm `effect` above it."""
    if metric["type"] == "binomial":
        p, q = metric["rate"], metric["rate"] + effect
        return p * (1 - p), q * (1 - q)
    return metric["stddev"] ** 2, metric["stddev"] ** 2


def test_alpha(plan):
    comparisons = len(plan["weights"]) - 1
    return plan["alpha"] / comparisons if plan.get("bonferroni") else plan["alpha"]


def effect_size(metric, effect, ratio):
    var_a, var_b = variances(metric, effect)
    return effect / math.sqrt((ratio * var_b + var_a) / (1 + ratio))


def treated_people(plan, effect, i):
    """statsmodels' nobs1: the people arm i needs against the baseline."""
    ratio = plan["weights"][0] / plan["weights"][i]
    return SOLVER.solve_power(
        effect_size=effect_size(plan["metric"], effect, ratio), nobs1=None,
        alpha=test_alpha(plan) / 2, power=plan["power"], ratio=ratio, alternative="larger",
    )


def sizing(plan, mde):
    metric, w = plan["metric"], plan["weights"]
    mean = metric["rate"] if metric["type"] == "binomial" else metric["mean"]
    effect = mde if plan.get("absolute") else mde * abs(mean)
    # Comparison i is powered once n_i / w_i people have entered.
    needs = [(treated_people(plan, effect, i) / w[i], i) for i in range(1, len(w))]
    total, binding = max(needs)
    per_arm = [total * share for share in w]
    people = [math.ceil(n) for n in per_arm]
    out = {"per_arm": per_arm, "people": people, "total": sum(people), "binding": binding,
           "alpha": test_alpha(plan), "effect": effect, "days": None}
    if plan.get("daily_traffic"):
        out["days"] = max(math.ceil(n / (plan["daily_traffic"] * share)) for n, share in zip(people, w))
    return out


def detectable(plan, budget):
    metric, w = plan["metric"], plan["weights"]
    total = budget["people"] if "people" in budget else budget["days"] * plan["daily_traffic"]
    kwargs = {"alpha": test_alpha(plan) / 2, "alternative": "larger"}
    effects = []
    for i in range(1, len(w)):
        ratio, nobs1 = w[0] / w[i], total * w[i]

        def shortfall(effect):
            d = effect_size(metric, effect, ratio)
            return SOLVER.power(effect_size=d, nobs1=nobs1, ratio=ratio, **kwargs) - plan["power"]

        # statsmodels' own solve for the effect size stops at about 1e-5; brentq on its
        # power goes to the last digits. A rate's rise stays below 1.
        upper = 1 - metric["rate"] - 1e-12 if metric["type"] == "binomial" else 100 * metric["stddev"]
        effects.append(brentq(shortfall, 1e-12, upper, xtol=1e-16, rtol=1e-15))
    effect = max(effects)
    mean = metric["rate"] if metric["type"] == "binomial" else metric["mean"]
    return effect if plan.get("absolute") else effect / abs(mean)


def main(path):
    cases = []
    for case in CASES:
        plan = case["plan"]
        cases.append({
            "name": case["name"],
            "plan": plan,
            "mde": case["mde"],
            "expected": sizing(plan, case["mde"]),
            "detectable": [{"budget": b, "mde": detectable(plan, b)} for b in case["budgets"]],
        })
    out = {
        "reference": f"tests/reference/planning_cases.py, statsmodels {statsmodels.__version__} "
                     "NormalIndPower (alternative='larger' at alpha / 2)",
        "cases": cases,
    }
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
