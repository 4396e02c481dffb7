import contextlib
import json
import os

import pytest

# registers the model and state classes with the artifact codec: the tests save and load artifacts in this
# process (the engines and the store do not know each other; nq_dagster/codecs.py joins them)
import nq_dagster.codecs  # noqa: F401
from nq_dagster.store import Warehouse

SMALL_CONFIG = {"neuron_count": 120, "reservoir_size": 80, "train_min": 250, "refit_every": 200}


@pytest.fixture
def wh(tmp_path, monkeypatch):
    home = tmp_path / "nq"
    monkeypatch.setenv("NQ_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    w = Warehouse(home).ensure()
    (home / "config.json").write_text(json.dumps(SMALL_CONFIG))
    return w


@contextlib.contextmanager
def small_home(home):
    """NQ_HOME and DAGSTER_HOME pointed at `home` (SMALL_CONFIG written there) for a module-scoped fixture,
    which cannot use monkeypatch; restored afterwards."""
    from nq_dagster.store import Warehouse

    old = {k: os.environ.get(k) for k in ("NQ_HOME", "DAGSTER_HOME")}
    os.environ["NQ_HOME"], os.environ["DAGSTER_HOME"] = str(home), str(home / "dagster")
    wh = Warehouse(home).ensure()
    (home / "config.json").write_text(json.dumps(SMALL_CONFIG))
    try:
        yield wh
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def trained_base(tmp_path_factory):
    """One trained data directory for the whole session (tests/serving.build_trained_home: about 45 s on two
    cores), shared by the server test modules; each test copies it (`serving.copy_home`) before using it."""
    from .serving import build_trained_home

    return build_trained_home(tmp_path_factory.mktemp("trained"))
