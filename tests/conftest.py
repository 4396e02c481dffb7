import json

import pytest

from nq_dagster.resources.storage import Warehouse

SMALL_CONFIG = {"neuron_count": 120, "reservoir_size": 80, "train_min": 250, "refit_every": 200}


@pytest.fixture
def wh(tmp_path, monkeypatch):
    home = tmp_path / "nq"
    monkeypatch.setenv("NQ_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    w = Warehouse(home).ensure()
    (home / "config.json").write_text(json.dumps(SMALL_CONFIG))
    return w
