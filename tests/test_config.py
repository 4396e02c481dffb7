"""The config's bounds: what `config.json` and `PUT /api/v1/config/...` accept is what one machine can train
(issue 26 item 6), every non-finite number is refused, and the defaults are inside every bound."""

import re

import pytest

from nq_dagster.config import UPPER, ConfigError, PipelineConfig, validate_overrides


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("reservoir_size", 10**7, "at most 5000"),
        ("neuron_count", 10**9, "at most 20000"),
        ("qubit_count", 40, "at most 30"),
        ("train_min", 10**12, "at most 1e+07"),
        ("horizon", 10**9, "at most 10000"),
        ("ridge_alpha", 0.0, "must be > 0"),
        ("spectral_radius", float("inf"), "not a finite number"),
        ("evolution_time", float("nan"), "not a finite number"),
    ],
)
def test_values_no_machine_could_train_are_refused_by_name(field, value, says):
    with pytest.raises(ConfigError, match=re.escape(says)) as exc:
        validate_overrides({field: value})
    assert exc.value.field == field


def test_the_defaults_are_inside_every_bound():
    defaults = PipelineConfig().as_dict()
    assert validate_overrides(defaults) == defaults
    assert all(defaults[k] <= hi for k, hi in UPPER.items())
