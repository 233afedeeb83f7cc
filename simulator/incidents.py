"""The guide's troubleshooting scenarios as named faults, started and stopped while the stand-in
pipeline runs, so every alert has a way to be made to fire on real components.

    fault = incident("stage-stalled")          # or incident("dlq-burst", error_type="ENCODING_ERROR")
    fault.start(env)                           # the index stage's consumer stops fetching
    ...                                        # lag grows, its committed offsets stop moving
    fault.stop(env)                            # it fetches again and drains its backlog

A fault acts on an ``Environment``: the simulator always; the exporter and the Kafka brokers only
where whoever runs the fault owns them (the demo and the end-to-end tests do). A bare ``treewatch
simulate`` owns neither and says so (IncidentUnavailable). Faults that slow, stall or fail a stage
act on the work the steady load brings: they need projects flowing to show anything.

What each incident makes page, and where, is the alerts' business: see docs/incidents.md.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from simulator.core import Simulator
from simulator.stages import ERROR_TYPES, StageBehaviour


class IncidentUnavailable(RuntimeError):
    """The fault needs something this environment does not own (the exporter, a broker)."""


class Environment(Protocol):
    """What faults act on: the stand-in pipeline, and the parts around it when they are ours."""

    simulator: Simulator

    def stop_exporter(self) -> None: ...
    def start_exporter(self) -> None: ...
    def stop_broker(self) -> None: ...
    def start_broker(self) -> None: ...


@dataclass
class SimulatorOnly:
    """The environment of a bare simulator (``treewatch simulate``): it runs no exporter and no broker."""

    simulator: Simulator

    def stop_exporter(self) -> None:
        raise IncidentUnavailable("this simulator runs no exporter: stop yours (or run `treewatch demo "
                                  "--incident exporter-down`)")

    start_exporter = stop_exporter

    def stop_broker(self) -> None:
        raise IncidentUnavailable("this simulator runs no Kafka broker: stop one of your cluster's brokers "
                                  "(the end-to-end tests do it on a three-node devkafka cluster)")

    start_broker = stop_broker


@dataclass
class Incident(ABC):
    """One named fault. Subclasses are dataclasses whose fields are its parameters, with defaults."""

    name: ClassVar[str]
    summary: ClassVar[str]
    # The section of the operators' guide whose symptoms the fault produces.
    guide: ClassVar[str]
    # What it acts on: "simulator" (a running `treewatch simulate --control` can start it), or
    # "exporter" / "cluster" (only whoever runs those can).
    acts_on: ClassVar[str] = "simulator"

    @abstractmethod
    def start(self, env: Environment) -> None: ...

    @abstractmethod
    def stop(self, env: Environment) -> None: ...

    @property
    def subject(self) -> dict[str, str]:
        """The stage or service the fault is about, as the alerts label it ({} for the cluster or the exporter)."""
        return {}

    @property
    def parameters(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    def describe(self) -> str:
        """One line: its name, what it acts on and what it does, with its parameters filled in."""
        where = ", ".join(f"{key} {value}" for key, value in self.subject.items())
        return f"{self.name}{f' ({where})' if where else ''}: {self.summary.format(**self.parameters)}"


@dataclass
class _StageIncident(Incident):
    """A fault of one stage. Which stages exist is the configuration's business: a name the running
    simulator does not have is refused when the incident starts (KeyError naming the ones it has)."""

    stage: str = "index"

    def __post_init__(self) -> None:
        if not isinstance(self.stage, str) or not self.stage:
            raise ValueError(f"stage must be a stage's name, got {self.stage!r}")

    @property
    def subject(self) -> dict[str, str]:
        return {"stage": self.stage}


@dataclass
class _ServiceIncident(Incident):
    service: str = "intelligence"

    @property
    def subject(self) -> dict[str, str]:
        return {"service": self.service}


@dataclass
class ServiceDown(_ServiceIncident):
    name: ClassVar[str] = "service-down"
    summary: ClassVar[str] = "the service stops answering: its health port refuses connections"
    guide: ClassVar[str] = "Quick Diagnostics: Health Check Workflow (a service does not answer)"

    def start(self, env: Environment) -> None:
        env.simulator.take_down(self.service)

    def stop(self, env: Environment) -> None:
        env.simulator.bring_up(self.service)


@dataclass
class ServiceDegraded(_ServiceIncident):
    name: ClassVar[str] = "service-degraded"
    summary: ClassVar[str] = "the service answers its health check with status degraded (HTTP 200)"
    guide: ClassVar[str] = "Issue 1: High Consumer Lag (check downstream service health; if degraded, restart)"
    service: str = "metadata-stamping"
    status: ClassVar[str] = "degraded"

    def start(self, env: Environment) -> None:
        env.simulator.set_health(self.service, self.status)

    def stop(self, env: Environment) -> None:
        env.simulator.set_health(self.service, "healthy")


@dataclass
class ServiceUnhealthy(ServiceDegraded):
    name: ClassVar[str] = "service-unhealthy"
    summary: ClassVar[str] = "the service answers its health check with status unhealthy (HTTP 503)"
    guide: ClassVar[str] = "Quick Diagnostics: Health Check Workflow (a service reports itself unhealthy)"
    service: str = "onextree"
    status: ClassVar[str] = "unhealthy"


@dataclass
class StageStalled(_StageIncident):
    name: ClassVar[str] = "stage-stalled"
    summary: ClassVar[str] = ("the stage's consumer stops fetching but stays in its group: lag grows, "
                              "its committed offsets stop moving")
    guide: ClassVar[str] = "Issue 1: High Consumer Lag / Procedure 2: Consumer Group Reset (consumer stuck)"

    def start(self, env: Environment) -> None:
        env.simulator.pause(self.stage)

    def stop(self, env: Environment) -> None:
        env.simulator.resume(self.stage)


@dataclass
class _StageSetting(_StageIncident):
    """An incident that changes one of the stage's behaviours (``setting``, a StageBehaviour field)
    while it runs, and puts back what was there before when it stops."""

    setting: ClassVar[str]
    _before: StageBehaviour | None = dataclasses.field(default=None, init=False, repr=False)

    @abstractmethod
    def value(self) -> float:
        """What the setting is while the incident runs."""

    def start(self, env: Environment) -> None:
        self._before = env.simulator.behaviour(self.stage)
        env.simulator.configure(self.stage, **{self.setting: self.value()})

    def stop(self, env: Environment) -> None:
        before = getattr(self._before, self.setting) if self._before is not None else 0.0
        env.simulator.configure(self.stage, **{self.setting: before})


@dataclass
class StageSlow(_StageSetting):
    name: ClassVar[str] = "stage-slow"
    summary: ClassVar[str] = ("each request takes the stage {seconds_per_request:g}s, so it processes fewer files "
                              "a second than the guide's floor while work waits")
    guide: ClassVar[str] = "Issue 4: Slow Project Ingestion (below 1,000 files a minute)"
    stage: str = "stamp"
    # 0.1 s: at most 10 files/s, well under the guide's floor of 1,000 a minute (16.67/s).
    seconds_per_request: float = 0.1
    setting: ClassVar[str] = "delay_seconds"

    def value(self) -> float:
        return self.seconds_per_request


@dataclass
class FailureRate(_StageSetting):
    name: ClassVar[str] = "failure-rate"
    summary: ClassVar[str] = ("{share:.0%} of the stage's requests fail with the guide's error types: a failed "
                              "event and a dead letter each")
    guide: ClassVar[str] = "Monitoring & Alerts: Error Rate (above 5 %)"
    stage: str = "stamp"
    share: float = 0.2
    setting: ClassVar[str] = "error_rate"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.share <= 1:
            raise ValueError(f"share must be in (0, 1], got {self.share}")

    def value(self) -> float:
        return self.share


@dataclass
class DlqBurst(_StageIncident):
    name: ClassVar[str] = "dlq-burst"
    summary: ClassVar[str] = ("{records} dead letters of {error_type} land in the stage's DLQ at once, one of "
                              "them malformed (cut short, not JSON)")
    guide: ClassVar[str] = "Issue 2: Events Stuck in DLQ"
    stage: str = "discover"
    error_type: str = "ENCODING_ERROR"
    # More than the guide's DLQOverflow threshold (10 in 5 minutes), malformed one included.
    records: int = 20

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.error_type not in ERROR_TYPES:
            raise ValueError(f"unknown error type {self.error_type!r}; expected one of {', '.join(ERROR_TYPES)}")
        if self.records < 2:
            raise ValueError(f"a burst is at least 2 records (one of them malformed), got {self.records}")

    def start(self, env: Environment) -> None:
        env.simulator.write_dead_letters(self.stage, self.error_type, self.records - 1, malformed=1)

    def stop(self, env: Environment) -> None:
        """Nothing to undo: the burst is written once; the DLQ alerts end when it leaves their window."""


@dataclass
class BrokerDown(Incident):
    name: ClassVar[str] = "broker-down"
    summary: ClassVar[str] = ("one broker of a three-node cluster stops: partitions it replicates are "
                              "under-replicated, those it was the only replica of have no leader")
    guide: ClassVar[str] = "Quick Diagnostics: Check Kafka/Redpanda health (rpk cluster health)"
    acts_on: ClassVar[str] = "cluster"

    def start(self, env: Environment) -> None:
        env.stop_broker()

    def stop(self, env: Environment) -> None:
        env.start_broker()


@dataclass
class ExporterDown(Incident):
    name: ClassVar[str] = "exporter-down"
    summary: ClassVar[str] = "the treewatch exporter stops: Prometheus' scrapes fail, every pipeline alert is blind"
    guide: ClassVar[str] = "Monitoring & Alerts (the metrics every query needs)"
    acts_on: ClassVar[str] = "exporter"

    def start(self, env: Environment) -> None:
        env.stop_exporter()

    def stop(self, env: Environment) -> None:
        env.start_exporter()


CATALOGUE: dict[str, type[Incident]] = {cls.name: cls for cls in (
    ServiceDown, ServiceDegraded, ServiceUnhealthy, StageStalled, StageSlow, FailureRate, DlqBurst,
    BrokerDown, ExporterDown,
)}


def incident(name: str, **parameters: Any) -> Incident:
    """The catalogue's incident ``name`` with its defaults, or with ``parameters`` (stage, service,
    error_type...) where it has them."""
    try:
        cls = CATALOGUE[name]
    except KeyError:
        raise KeyError(f"no incident named {name!r}; the catalogue has {', '.join(CATALOGUE)}") from None
    accepted = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(parameters) - accepted)
    if unknown:
        takes = ", ".join(sorted(accepted)) or "no parameters"
        raise ValueError(f"incident {name} has no parameter {unknown[0]!r}; it takes {takes}")
    return cls(**parameters)
