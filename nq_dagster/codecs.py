"""Which dataclasses an artifact may hold: the model and state classes of the engines, registered with the
artifact codec (store layer, `nq_dagster.store.artifacts`) at import. It sits above both, so that neither the
engines know the store nor the store the engines; every process that saves or loads these artifacts imports it
first (the composition roots, the Dagster layer where it touches artifacts, the tests' conftest). It imports
torch (through the reservoir state), so the Dagster code location imports it only in the steps that need it.
"""

from nq_dagster.fusion.intervals import IntervalState
from nq_dagster.fusion.model import LiveCalibration, ModelVersion, ServingState
from nq_dagster.fusion.ridge import LinearStage
from nq_dagster.fusion.stream import StreamState
from nq_dagster.fusion.walkforward import FusionModel
from nq_dagster.neuromorphic.reservoir import ReservoirState
from nq_dagster.store.artifacts import register

ARTIFACT_CLASSES = (
    ReservoirState,
    StreamState,
    LinearStage,
    FusionModel,
    ModelVersion,
    LiveCalibration,
    ServingState,
    IntervalState,
)

for _cls in ARTIFACT_CLASSES:
    register(_cls)
