"""Reference off-policy estimates for measurement: obp 0.5.7's IPW, SNIPW, DM and DR of
the candidate policy on the Open Bandit Dataset sample, and the time they take, for tests
and corvus-bench.

    pip install -r tests/reference/requirements.txt
    pip install --no-deps --ignore-requires-python obp==0.5.7
    python3 tests/reference/obp_ope.py services/measurement/tests/data/obd [--time N]

obp 0.5.7 declares Python < 3.11 and needs torch, seaborn and more, so it is installed
without its dependencies and only its estimators are imported: `obp/__init__.py` and
`obp/ope/__init__.py` are skipped, and obp.utils's top-level `import torch` gets a stub
that raises if anything but the annotation read at import touches it.

Prints one JSON object: the four estimates, the median seconds of computing all four
(the estimator calls only) over at least N runs (default 20) and at least 1 s, and the
number of runs. Exits non-zero if the estimates differ from the dataset README's by 1e-9.
"""

import importlib.metadata
import importlib.util
import json
import os
import statistics
import sys
import time
import types

import numpy as np
import pandas as pd
import scipy.stats  # noqa: F401  obp's imports, loaded before the torch stub below: their
import sklearn.utils  # noqa: F401  array-API checks look for torch in sys.modules

REFERENCE = {"ipw": 0.00455288, "snipw": 0.004775833081, "dm": 0.003540046105, "dr": 0.004838331237}


def untouched(name):
    raise RuntimeError(f"obp used torch.{name}")


root = importlib.util.find_spec("obp").submodule_search_locations[0]
for name, path in (("obp", root), ("obp.ope", os.path.join(root, "ope"))):
    sys.modules[name] = types.ModuleType(name)
    sys.modules[name].__path__ = [path]
sys.modules["torch"] = types.ModuleType("torch")
sys.modules["torch"].tensor = None  # obp.utils.check_tensor's annotation, read at import
sys.modules["torch"].__getattr__ = untouched
from obp.ope.estimators import (  # noqa: E402
    DirectMethod,
    DoublyRobust,
    InverseProbabilityWeighting,
    SelfNormalizedInverseProbabilityWeighting,
)

del sys.modules["torch"]  # seen by obp.utils only, not by scikit-learn's or SciPy's checks

directory = sys.argv[1]
runs = int(sys.argv[-1]) if "--time" in sys.argv and sys.argv[-1].isdigit() else 20
logged = pd.read_csv(os.path.join(directory, "logged.csv")).sort_values("round")
policy = pd.read_csv(os.path.join(directory, "policy.csv"))
rewards = pd.read_csv(os.path.join(directory, "rewards.csv.gz"))

n, n_actions, len_list = len(logged), policy.action.max() + 1, policy.position.max() + 1
action, position = logged.action.to_numpy(), logged.position.to_numpy()
reward, pscore = logged.reward.to_numpy(), logged.pscore.to_numpy()
probability = np.zeros((n_actions, len_list))
probability[policy.action, policy.position] = policy.probability
action_dist = np.tile(probability, (n, 1, 1))  # the same in every round
# q is given at each round's logged position, the only one the estimators read.
q = np.zeros((n, n_actions, len_list))
q[rewards["round"], rewards.action, position[rewards["round"]]] = rewards.q
logs = dict(reward=reward, action=action, position=position, pscore=pscore, action_dist=action_dist)


def estimates():
    return {
        "ipw": InverseProbabilityWeighting().estimate_policy_value(**logs),
        "snipw": SelfNormalizedInverseProbabilityWeighting().estimate_policy_value(**logs),
        "dm": DirectMethod().estimate_policy_value(action_dist=action_dist, estimated_rewards_by_reg_model=q, position=position),
        "dr": DoublyRobust().estimate_policy_value(**logs, estimated_rewards_by_reg_model=q),
    }


values = {k: float(v) for k, v in estimates().items()}
version = importlib.metadata.version("obp")
wrong = {k: v for k, v in values.items() if abs(v - REFERENCE[k]) > 1e-9}
if wrong or version != "0.5.7":
    sys.exit(f"obp {version} estimates {values} differ from the reference {REFERENCE}")

times = []
while len(times) < runs or sum(times) < 1.0:
    start = time.perf_counter()
    estimates()
    times.append(time.perf_counter() - start)
json.dump({**values, "seconds": statistics.median(times), "runs": len(times), "obp": version}, sys.stdout)
sys.stdout.write("\n")
