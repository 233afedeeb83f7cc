"""A stand-in for the tree stamping pipeline's services: real topics, real consumer groups,
real /health endpoints, for the demo, benchmarks and end-to-end tests."""

from simulator.core import Simulator, SimulatorError, SimulatorSettings
from simulator.health import STATUSES, HealthEndpoints
from simulator.load import Project
from simulator.stages import ERROR_TYPES, INVALID_EVENT, StageBehaviour
from simulator.worker import WorkerStuck

__all__ = [
    "ERROR_TYPES", "INVALID_EVENT", "STATUSES",
    "HealthEndpoints", "Project", "Simulator", "SimulatorError", "SimulatorSettings", "StageBehaviour",
    "WorkerStuck",
]
