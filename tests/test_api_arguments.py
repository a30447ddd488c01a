"""Bad arguments to the library's API are refused up front, in one line that names the parameter (from a user
trial: each case here once failed deep inside with a raw TypeError, IndexError or numpy/torch error)."""
from __future__ import annotations

import numpy as np
import pytest

from onnxplain.errors import OnnxplainError
from onnxplain.lrp import LRP


@pytest.fixture(scope="module")
def digit(digits_cnn):
    return np.load(digits_cnn.parent / "samples" / "digit3_cnn.npy")[None]


def _refused(match: str, call) -> str:
    with pytest.raises(OnnxplainError, match=match) as error:
        call()
    assert "\n" not in str(error.value)
    return str(error.value)


@pytest.mark.parametrize("rules", [["Conv=zplus"], "Conv=zplus", {3: "z"}, {"Conv": 0.5}])
def test_lrp_rules_must_map_names_to_rule_specs(rules):
    _refused("rules must be a mapping of op type or node-name pattern", lambda: LRP(rules=rules))
    method = LRP(rules={"Conv": "zplus"})
    _refused("rules must be a mapping", lambda: setattr(method, "rules", rules))
    assert method.rules == {"Conv": "zplus"}
