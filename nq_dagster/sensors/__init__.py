"""Sensors and schedules: the landing zone, run failures, training and freshness."""

from nq_dagster.sensors.failures import run_failure_recorder
from nq_dagster.sensors.landing import landing_sensor
from nq_dagster.sensors.schedules import training_schedule

__all__ = ["landing_sensor", "run_failure_recorder", "training_schedule"]
