"""Sensors: the landing zone and run failures (training and the portfolio are declarative automation)."""

from nq_dagster.sensors.failures import run_failure_recorder
from nq_dagster.sensors.landing import landing_sensor

__all__ = ["landing_sensor", "run_failure_recorder"]
