"""Writes the `reference` of experiment cases that use what the shared cases do not (a
ratio metric, CUPED's covariate), computed by GrowthBook's stats engine, gbstats 0.8.0,
through its own statistics and tests as its `analyze_metric_df` configures them, and
the share of the lift's variance CUPED removes (the data's variance of the lift, with
gbstats' own formula, on the adjusted statistics against the unadjusted ones).

    pip install --no-deps gbstats==0.8.0   # its classes need only numpy, scipy, pydantic
    python3 tests/reference/gbstats_cases.py services/measurement/tests/data/experiments/ratio_revenue_per_order.json ...

Each file's `case` is read and its `reference` written in place.
"""

import json
import sys
from dataclasses import asdict

from gbstats.bayesian.tests import EffectBayesianABTest, EffectBayesianConfig, GaussianPrior
from gbstats.frequentist.tests import (
    FrequentistConfig,
    SequentialConfig,
    SequentialTwoSidedTTest,
    TwoSidedTTest,
    frequentist_variance,
)
from gbstats.models.statistics import (
    ProportionStatistic,
    RatioStatistic,
    RegressionAdjustedStatistic,
    SampleMeanStatistic,
)
from gbstats.utils import check_srm

SETTINGS = {
    "frequentist_relative": ("frequentist", "relative", False),
    "frequentist_absolute": ("frequentist", "absolute", False),
    "frequentist_sequential_relative": ("frequentist", "relative", True),
    "bayesian_relative": ("bayesian", "relative", False),
    "bayesian_absolute": ("bayesian", "absolute", False),
}


def base(case, v, prefix=""):
    n = v["users"]
    if prefix == "" and case["metric_type"] == "binomial":
        return ProportionStatistic(n=n, sum=v["sum"])
    return SampleMeanStatistic(n=n, sum=v[prefix + "sum"], sum_squares=v[prefix + "sum_squares"])


def statistic(case, v, plain=False):
    n = v["users"]
    if case["metric_type"] == "ratio":
        return RatioStatistic(
            n=n,
            m_statistic=base(case, v),
            d_statistic=SampleMeanStatistic(n=n, sum=v["denominator_sum"], sum_squares=v["denominator_sum_squares"]),
            m_d_sum_of_products=v["sum_products"],
        )
    if "covariate_sum" in v and not plain:
        return RegressionAdjustedStatistic(
            n=n,
            post_statistic=base(case, v),
            pre_statistic=base(case, v, "covariate_"),
            post_pre_sum_of_products=v["covariate_sum_products"],
            theta=0,
        )
    return base(case, v)


def test_of(case, setting, a, b, i):
    engine, difference, sequential = SETTINGS[setting]
    common = {"traffic_proportion_b": case["weights"][i], "phase_length_days": 1, "difference_type": difference}
    if engine == "frequentist":
        if sequential:
            config = SequentialConfig(
                **common, alpha=case["alpha"], sequential_tuning_parameter=case["sequential_tuning_parameter"]
            )
            return SequentialTwoSidedTTest(a, b, config)
        return TwoSidedTTest(a, b, FrequentistConfig(**common, alpha=case["alpha"]))
    prior = case["prior"]
    # With the case's alpha: gbstats' own runner leaves the Bayesian test at its default
    # (a 95 % interval whatever alpha), where Corvus follows the case.
    config = EffectBayesianConfig(
        **common,
        alpha=case["alpha"],
        inverse=case["inverse"],
        prior_effect=GaussianPrior(mean=prior["mean"], variance=prior["stddev"] ** 2, proper=prior["proper"]),
        prior_type="relative",
    )
    return EffectBayesianABTest(a, b, config)


def difference_of(setting):
    return SETTINGS[setting][1]


def lift_variance(a, b, relative):
    return frequentist_variance(a.variance, a.unadjusted_mean, a.n, b.variance, b.unadjusted_mean, b.n, relative)


def analyze(case, setting):
    variants = case["variants"]
    out = []
    baseline = None
    for i in range(1, len(variants)):
        test = test_of(case, setting, statistic(case, variants[0]), statistic(case, variants[i]), i)
        res = test.compute_result()
        baseline = test.stat_a
        row = {
            "name": variants[i]["name"],
            "users": float(variants[i]["users"]),
            "mean": test.stat_b.unadjusted_mean,
            "stddev": test.stat_b.stddev,
        }
        if test.stat_a.unadjusted_mean <= 0:
            expected = 0
        elif res.expected == 0:
            expected = (test.stat_b.mean - test.stat_a.mean) / test.stat_a.unadjusted_mean
        else:
            expected = res.expected
        uplift = asdict(res.uplift)
        row.update(
            expected=expected,
            ci=list(res.ci),
            uplift_mean=uplift["mean"],
            uplift_stddev=uplift["stddev"],
            error=res.error_message,
        )
        if setting.startswith("bayesian"):
            row.update(chance_to_win=res.chance_to_win, risk=list(res.risk))
        else:
            row["p_value"] = res.p_value
        if "covariate_sum" in variants[0] and res.error_message is None:
            # The data's variance of the lift (before any prior), adjusted and not.
            relative = difference_of(setting) == "relative"
            plain = (statistic(case, variants[0], True), statistic(case, variants[i], True))
            before = lift_variance(plain[0], plain[1], relative)
            after = lift_variance(test.stat_a, test.stat_b, relative)
            row["cuped_variance_reduction"] = 1 - after / before
        out.append(row)
    first = variants[0]
    out.insert(
        0,
        {"name": first["name"], "users": float(first["users"]), "mean": baseline.unadjusted_mean, "stddev": baseline.stddev},
    )
    srm = check_srm([v["users"] for v in variants], case["weights"])
    return {"srm_p": float(srm), "variations": out}


def main():
    for path in sys.argv[1:]:
        with open(path) as f:
            doc = json.load(f)
        case = doc["case"]
        case.setdefault("alpha", 0.05)
        case.setdefault("sequential_tuning_parameter", 5000)
        case.setdefault("prior", {"proper": False, "mean": 0.0, "stddev": 0.3})
        case.setdefault("inverse", False)
        doc["reference"] = {setting: analyze(case, setting) for setting in SETTINGS}
        doc["generated_by"] = "tests/reference/gbstats_cases.py with gbstats 0.8.0"
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
