"""Running incidents against the alert chain and reading back what Slack got.

A drill starts a set of incidents together (they must not share a fault: each its own stage,
service, or the cluster or exporter alone), keeps each one going until every alert it ``pages``
has reached Slack and every alert it ``silenced`` has been seen inhibited in Alertmanager, then
stops it and waits for the resolved messages. It never decides pass or fail: it returns what
happened, with times, for a test to assert on and for the demo to tell.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from localbundle.incident_alerts import EXPECTED, Expected
from localbundle.stack import MonitoringStack, SlackMessage
from simulator.incidents import Incident

POLL_SECONDS = 0.25


class Injector(Protocol):
    """Starts and stops incidents wherever they act (a simulator in this process or another)."""

    def start(self, incident: Incident) -> None: ...
    def stop(self, incident: Incident) -> None: ...


@dataclass
class IncidentRun:
    """One incident in a drill: when it started and stopped, what it made page."""

    incident: Incident
    expected: Expected
    started_at: float
    stopped_at: float | None = None
    inhibited: set[str] = field(default_factory=set)  # silenced alerts seen inhibited in Alertmanager
    messages: list[SlackMessage] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.incident.name

    def concerns(self, message: SlackMessage) -> bool:
        """Whether a Slack message is about this incident: one of its alerts, on its stage or service
        (an incident of the cluster or the exporter has none: its alerts on any stage are its own)."""
        if message.alertname not in self.expected.alertnames:
            return False
        return not self.incident.subject or message.subject == self.incident.subject

    def first(self, alertname: str, status: str, *, after: float | None = None) -> SlackMessage | None:
        return next((m for m in self.messages if m.alertname == alertname and m.status == status
                     and (after is None or m.received_at >= after)), None)

    def paged(self) -> set[str]:
        """Alerts of this incident that reached Slack firing."""
        return {m.alertname for m in self.messages if m.status == "firing"}

    def missing_pages(self) -> list[str]:
        return [name for name in self.expected.pages if self.first(name, "firing") is None]

    def missing_inhibitions(self) -> list[str]:
        return [name for name in self.expected.silenced if name not in self.inhibited]

    def ready_to_stop(self) -> bool:
        return not self.missing_pages() and not self.missing_inhibitions()

    def last(self, alertname: str) -> SlackMessage | None:
        return next((m for m in reversed(self.messages) if m.alertname == alertname), None)

    def must_resolve(self) -> set[str]:
        """Every alert of this incident that paged, except those whose windows outlast it on purpose."""
        return self.paged() - set(self.expected.lingering)

    def missing_resolved(self) -> list[str]:
        """Alerts still firing in Slack (their last message is not a resolved one), and pages without
        a resolved message since the incident was stopped."""
        if self.stopped_at is None:
            return sorted(self.must_resolve())
        still_firing = {name for name in self.must_resolve() if self.last(name).status != "resolved"}
        not_since_stop = {name for name in self.expected.pages
                          if self.first(name, "resolved", after=self.stopped_at) is None}
        return sorted(still_firing | not_since_stop)

    def timings(self) -> dict[str, dict[str, float]]:
        """alertname -> seconds from the incident's start to its first page, and from the stop to its
        resolved message."""
        result: dict[str, dict[str, float]] = {}
        for name in sorted(self.paged()):
            firing = self.first(name, "firing")
            entry = {"paged_after": round(firing.received_at - self.started_at, 1)} if firing else {}
            if self.stopped_at is not None and (resolved := self.first(name, "resolved", after=self.stopped_at)):
                entry["resolved_after_stop"] = round(resolved.received_at - self.stopped_at, 1)
            result[name] = entry
        return result


@dataclass
class DrillResult:
    runs: list[IncidentRun]
    # Slack messages that concern none of the incidents: false pages.
    unexplained: list[SlackMessage]
    started_at: float
    finished_at: float
    timed_out: bool

    def run(self, name: str) -> IncidentRun:
        return next(run for run in self.runs if run.name == name)


class Drill:
    def __init__(self, stack: MonitoringStack, injector: Injector,
                 on_event: Callable[[str], None] | None = None) -> None:
        self.stack = stack
        self.injector = injector
        self.on_event = on_event or (lambda _line: None)

    def run(self, incidents: Sequence[Incident], timeout: float,
            tick: Callable[[], bool] = lambda: True) -> DrillResult:
        """Start ``incidents`` together and drive each to its end; ``timeout`` bounds the whole drill
        (whatever has not happened by then is missing from the result, every incident is stopped).
        ``tick`` is called every round (the demo publishes and prints from it); False ends the drill."""
        subjects = [tuple(sorted(i.subject.items())) for i in incidents]
        if len(set(subjects)) != len(subjects):
            raise ValueError("incidents run together must each have their own stage, service or scope")
        already = len(self.stack.sink.messages())
        started = time.monotonic()
        deadline = started + timeout
        runs = []
        for incident in incidents:
            # Its start counts from the request: stopping a broker takes seconds, and pages may come
            # before that returns.
            run = IncidentRun(incident, EXPECTED[incident.name], time.monotonic())
            self.injector.start(incident)
            runs.append(run)
            self.on_event(f"started {incident.describe()}")
        unexplained: list[SlackMessage] = []
        timed_out = False
        try:
            while tick():
                unexplained = self._sort_messages(runs, already)
                self._look_for_inhibitions(runs)
                for run in runs:
                    if run.stopped_at is None and run.ready_to_stop():
                        self._stop(run)
                if all(run.stopped_at is not None and not run.missing_resolved() for run in runs):
                    break
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                time.sleep(POLL_SECONDS)
        finally:
            for run in runs:
                if run.stopped_at is None:
                    self._stop(run)
        unexplained = self._sort_messages(runs, already)
        return DrillResult(runs, unexplained, started, time.monotonic(), timed_out)

    def _stop(self, run: IncidentRun) -> None:
        self.injector.stop(run.incident)
        run.stopped_at = time.monotonic()
        self.on_event(f"stopped {run.name} after {run.stopped_at - run.started_at:.0f}s")

    def _sort_messages(self, runs: list[IncidentRun], skip: int) -> list[SlackMessage]:
        unexplained = []
        for run in runs:
            run.messages.clear()
        for message in self.stack.sink.messages()[skip:]:
            owners = [run for run in runs if run.concerns(message)]
            for run in owners:
                run.messages.append(message)
            if not owners:
                unexplained.append(message)
        return unexplained

    def _look_for_inhibitions(self, runs: list[IncidentRun]) -> None:
        for run in runs:
            for name in run.missing_inhibitions():
                if run.stopped_at is not None:
                    continue
                matchers = [f'alertname="{name}"', *(f'{k}="{v}"' for k, v in run.incident.subject.items())]
                try:
                    held = self.stack.alertmanager.alerts(*matchers)
                except httpx.HTTPError:
                    continue  # asked again on the next round
                if any(alert["status"]["inhibitedBy"] for alert in held):
                    run.inhibited.add(name)
                    self.on_event(f"{run.name}: {name} fired and is held back by the inhibition")
