"""Building blocks every treewatch dashboard shares: the datasource variable, panels that always
carry a datasource, a unit and a description, thresholds taken from the monitoring config, runbook
links, and a layout that places panels on Grafana's 24-column grid without overlaps."""

from __future__ import annotations

import json
from collections.abc import Sequence

from grafanalib import core as g

from alerts.config import (
    DLQ_RECORDS_WRITTEN,
    GROUPS_DLQ_DASHBOARD_UID,
    OVERVIEW_DASHBOARD_UID,
    MonitoringConfig,
    current_values,
)
from alerts.environments import CLUSTER_LABEL, ENV_LABEL, keeping_environment


class _ValuesBeingBuilt:
    """Reads as the MonitoringConfig of the deployment the dashboards are being built for
    (alerts.config.building_for; the defaults otherwise): panels read ``CONFIG.<field>`` while they
    are built, so each build draws its own deployment's thresholds and links."""

    def __getattr__(self, name: str) -> object:
        return getattr(current_values(), name)


CONFIG: MonitoringConfig = _ValuesBeingBuilt()  # type: ignore[assignment]

# Every panel's selector keeps to the environments and clusters the dashboard's variables select.
ENVIRONMENT_MATCHERS = f'{ENV_LABEL}=~"${ENV_LABEL}", {CLUSTER_LABEL}=~"${CLUSTER_LABEL}"'
# The series every exporter serves, whatever it watches: where the environments are listed from.
BUILD_INFO = "treewatch_build_info"

# Panels and targets name the datasource through the variable, never by name, so one JSON file
# works against whichever Prometheus the variable selects; the provisioned one has uid "prometheus".
DATASOURCE_UID = "prometheus"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# Grafana 9 (schema 37) already understands datasource references by uid and timeseries panels,
# so it loads these files without migrating them.
SCHEMA_VERSION = 37

# Fixed, because the alert rules' dashboard_url links to them.
OVERVIEW_UID = OVERVIEW_DASHBOARD_UID
GROUPS_DLQ_UID = GROUPS_DLQ_DASHBOARD_UID

# What Grafana substitutes for a multi-value variable set to "All": a regex every value matches.
ALL_VALUE = ".*"

# The window DLQOverflow counts new dead letters in.
DLQ_OVERFLOW_WINDOW = CONFIG.dlq_window

# What tree_dlq_records_total counts, for the descriptions of the panels that rate() it: an exporter
# restart neither replays the retained records as new nor, while it was down, counts what arrived.
DLQ_RECORDS_SINCE_FIRST_SEEN = (
    "dead letters written since the exporter first saw the queue (records already retained then, or "
    "written while no exporter ran, are not counted as new)."
)

GREEN, ORANGE, RED = "green", "orange", "red"

GRID_WIDTH = 24

# None leaves it to Grafana (about one point per pixel); grafanalib's default of 100 would coarsen a
# 3 h graph to one point per 108 s.
MAX_DATA_POINTS = None


def runbooks(*alerts: str) -> list[g.DataLink]:
    """Panel links to the runbook sections of the alerts a panel shows the cause of."""
    return [g.DataLink(title=f"Runbook: {alert}", linkUrl=CONFIG.runbook_url(alert),
                       isNewTab=True) for alert in alerts]


def sel(metric: str, matchers: str = "") -> str:
    """``metric`` restricted to the treewatch exporter's series (the selector the alert rules use) of
    the environments and clusters the dashboard's variables select, so a Prometheus that also scrapes
    another Kafka exporter, or the pipelines of other environments, never mixes their series in."""
    return _exporter_sel(metric, ", ".join(filter(None, [ENVIRONMENT_MATCHERS, matchers])))


def services_sel(metric: str, matchers: str = "") -> str:
    """``metric`` restricted to the pipeline services' own series (Prometheus scrapes their /metrics
    directly: the selector SlowProjectIngestion uses) of the selected environments and clusters."""
    extra = ", ".join(filter(None, [ENVIRONMENT_MATCHERS, matchers]))
    return f"{metric}{{{CONFIG.services_selector}, {extra}}}"


def _exporter_sel(metric: str, matchers: str = "") -> str:
    extra = f", {matchers}" if matchers else ""
    return f"{metric}{{{CONFIG.exporter_selector}{extra}}}"


def by(*labels: str) -> str:
    """The labels of a panel's ``sum by``/``max by``, after env and cluster: one line per environment
    and cluster when several are selected, never their sum (alerts/environments.py)."""
    return keeping_environment(*labels)


def dlq_records_written(stage_matchers: str = "") -> str:
    """Records written to each stage's dead letter queue topic in DLQ_OVERFLOW_WINDOW: the recording
    rule DLQOverflow compares with its threshold."""
    return sel(DLQ_RECORDS_WRITTEN, stage_matchers)


def one_replica(expr: str) -> str:
    """One value per series however many exporter replicas Prometheus scrapes: they watch the same
    Kafka and report the same numbers, so a panel that adds series up must not add replicas up."""
    return f"max without (instance) ({expr})"


def datasource_variable() -> g.Template:
    return g.Template(
        name="datasource",
        label="Data source",
        type="datasource",
        query="prometheus",
        default=DATASOURCE_UID,
        regex="",
    )


class _MultiValueVariable(g.Template):
    """A variable that opens on "All" as a list: grafanalib writes its default as a single value."""

    def to_json_data(self) -> dict:
        return {**super().to_json_data(), "current": {"selected": True, "text": ["All"], "value": ["$__all"]}}


def environment_variables() -> list[g.Template]:
    """$env, then $cluster within it: the target labels the scrape configuration gives each
    exporter (alerts/environments.py). A deployment without them gets no values and "All" (``.*``),
    which matches series without the label, so its panels show what they always did."""
    return [
        query_variable(ENV_LABEL, "Environment", BUILD_INFO, environment_filtered=False),
        query_variable(CLUSTER_LABEL, "Kafka cluster", BUILD_INFO, matchers=f'{ENV_LABEL}=~"${ENV_LABEL}"',
                       environment_filtered=False),
    ]


def query_variable(name: str, label: str, metric: str, *, matchers: str = "",
                   environment_filtered: bool = True) -> g.Template:
    """A multi-select variable over the values ``metric`` carries for label ``name``, within the
    selected environments and clusters unless ``environment_filtered`` is False."""
    selector = sel(metric, matchers) if environment_filtered else _exporter_sel(metric, matchers)
    return _MultiValueVariable(
        name=name,
        label=label,
        query=f"label_values({selector}, {name})",
        dataSource=DATASOURCE,
        includeAll=True,
        multi=True,
        allValue=ALL_VALUE,
        refresh=g.REFRESH_ON_TIME_RANGE_CHANGE,
        regex="",
    )


def target(expr: str, legend: str = "", *, ref_id: str = "A", instant: bool = False,
           table: bool = False) -> g.Target:
    return g.Target(
        expr=expr,
        legendFormat=legend,
        refId=ref_id,
        instant=instant,
        format=g.TABLE_TARGET_FORMAT if table else g.TIME_SERIES_TARGET_FORMAT,
        intervalFactor=1,
        datasource=DATASOURCE,
    )


def steps(base: str, *levels: tuple[float, str]) -> list[dict]:
    """Threshold steps: ``base`` below the first level, then each (value, color) upwards."""
    return [{"color": base, "value": None}, *({"color": color, "value": value} for value, color in levels)]


def above(value: float, color: str = RED) -> list[dict]:
    """Fine below ``value``, bad at and above it."""
    return steps(GREEN, (value, color))


def below(value: float, color: str = RED) -> list[dict]:
    """Bad below ``value``, fine at and above it."""
    return steps(color, (value, GREEN))


def value_mappings(*items: tuple[int, str, str]) -> list[g.StatValueMappings]:
    """(value, text, color) for numbers that encode a state."""
    return [g.StatValueMappings(*(g.StatValueMappingItem(text, str(value), color, index)
                                  for index, (value, text, color) in enumerate(items)))]


def one_hot_code(metric: str, label: str, states: Sequence[str], by: str, matchers: str = "") -> str:
    """Turn a one-hot state metric into one number per ``by``: the 1-based position of the state
    whose series is 1, or 0 when none is; value mappings turn the number back into the state."""
    extra = f", {matchers}" if matchers else ""
    terms = []
    for code, state in enumerate(states, start=1):
        selector = sel(metric, f'{label}="{state}"{extra}')
        terms.append(f"{code} * sum by ({keeping_environment(by)}) ({one_replica(selector)})")
    return "\n + ".join(terms)


def threshold_override(series_regex: str, thresholds: list[dict]) -> dict:
    """Thresholds drawn (and coloured) only for the series whose display name matches the regex."""
    return {
        "matcher": {"id": "byRegexp", "options": series_regex},
        "properties": [
            {"id": "thresholds", "value": {"mode": "absolute", "steps": thresholds}},
            {"id": "custom.thresholdsStyle", "value": {"mode": "line"}},
        ],
    }


def _basics(title: str, description: str, queries: list[g.Target], links: Sequence[g.DataLink]) -> dict:
    """What every panel has: a title, a description, its queries on the datasource variable, links."""
    return {"title": title, "description": description, "dataSource": DATASOURCE, "targets": queries,
            "maxDataPoints": MAX_DATA_POINTS, "links": list(links)}


def timeseries(title: str, description: str, queries: list[g.Target], *, unit: str,
               thresholds: list[dict] | None = None, links: Sequence[g.DataLink] = (),
               stacked: bool = False, bars: bool = False, min_zero: bool = True,
               overrides: Sequence[dict] = ()) -> g.TimeSeries:
    return g.TimeSeries(
        **_basics(title, description, queries, links),
        unit=unit,
        thresholds=thresholds or steps(GREEN),
        thresholdsStyleMode="line" if thresholds else "off",
        stacking={"mode": "normal", "group": "A"} if stacked else {},
        drawStyle="bars" if bars else "line",
        fillOpacity=60 if bars else 10,
        legendDisplayMode="table",
        legendCalcs=["lastNotNull", "max"],
        tooltipMode="multi",
        tooltipSort="desc",
        valueMin=0 if min_zero else None,
        overrides=list(overrides),
    )


def stat(title: str, description: str, queries: list[g.Target], *, unit: str,
         thresholds: list[dict] | None = None, mappings: list | None = None,
         links: Sequence[g.DataLink] = (), text_mode: str = "value_and_name",
         no_value: str = "no data") -> g.Stat:
    return g.Stat(
        **_basics(title, description, queries, links),
        format=unit,
        thresholds=thresholds or steps(GREEN),
        color={"mode": "thresholds"},
        colorMode="background",
        graphMode="none",
        reduceCalc="lastNotNull",
        textMode=text_mode,
        mappings=mappings or [],
        noValue=no_value,
    )


def state_timeline(title: str, description: str, queries: list[g.Target], *, mappings: list,
                   links: Sequence[g.DataLink] = ()) -> g.StateTimeline:
    return g.StateTimeline(
        **_basics(title, description, queries, links),
        mappings=mappings,
        # grafanalib's StateTimeline has no unit field; the state is an enumeration, so "none".
        extraJson={"fieldConfig": {"defaults": {"unit": "none"}}},
    )


def table(title: str, description: str, queries: list[g.Target], *, unit: str,
          thresholds: list[dict] | None = None, hidden_columns: Sequence[str] = ("Time",),
          sort_by: str | None = None, links: Sequence[g.DataLink] = ()) -> g.Table:
    transformations = [{"id": "organize", "options": {"excludeByName": dict.fromkeys(hidden_columns, True)}}]
    return g.Table(
        **_basics(title, description, queries, links),
        unit=unit,
        thresholds=thresholds or steps(GREEN),
        displayMode="color-text" if thresholds else "auto",
        transformations=transformations,
        sortBy=[g.TableSortByField(displayName=sort_by, desc=True)] if sort_by else [],
    )


class Layout:
    """Places panels left to right in rows of Grafana's 24-column grid, starting a new line when a
    panel does not fit, so the JSON never holds two panels on the same cells."""

    def __init__(self) -> None:
        self.panels: list[g.Panel] = []
        self._x = 0
        self._y = 0
        self._line_height = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(g.RowPanel(title=title, gridPos=g.GridPos(h=1, w=GRID_WIDTH, x=0, y=self._y)))
        self._y += 1

    def add(self, panel: g.Panel, *, w: int, h: int = 8) -> None:
        if not 0 < w <= GRID_WIDTH:
            raise ValueError(f"panel {panel.title!r}: width {w} is outside 1..{GRID_WIDTH}")
        if self._x + w > GRID_WIDTH:
            self._newline()
        panel.gridPos = g.GridPos(h=h, w=w, x=self._x, y=self._y)
        self.panels.append(panel)
        self._x += w
        self._line_height = max(self._line_height, h)

    def _newline(self) -> None:
        self._y += self._line_height
        self._x = 0
        self._line_height = 0


# What dashboard() builds; the dashboard modules name it through here and never import grafanalib.
Dashboard = g.Dashboard


def dashboard(*, uid: str, title: str, description: str, layout: Layout,
              variables: Sequence[g.Template], links: Sequence[g.DashboardLink]) -> Dashboard:
    return g.Dashboard(
        uid=uid,
        title=title,
        description=description,
        tags=["treewatch", "tree-stamping"],
        timezone="browser",
        refresh="30s",
        time=g.Time("now-3h", "now"),
        schemaVersion=SCHEMA_VERSION,
        graphTooltip=g.GRAPH_TOOLTIP_MODE_SHARED_CROSSHAIR,
        templating=g.Templating([datasource_variable(), *environment_variables(), *variables]),
        links=list(links),
        panels=layout.panels,
    ).auto_panel_ids()


def dashboard_json(dashboard: Dashboard) -> dict:
    """Grafana's JSON model of ``dashboard``, as plain dicts, lists and scalars."""
    return json.loads(json.dumps(dashboard, default=_json_data))


def _json_data(value: object) -> object:
    """What json.dumps calls for an object it cannot write: grafanalib's objects write themselves."""
    if hasattr(value, "to_json_data"):
        return value.to_json_data()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dashboard_link(title: str, uid: str) -> g.DashboardLink:
    """A link that keeps the time range and the variables shared by both dashboards."""
    return g.DashboardLink(title=title, type="link", uri=f"/d/{uid}", keepTime=True, includeVars=True,
                           icon="dashboard")


def runbook_dashboard_link() -> g.DashboardLink:
    return g.DashboardLink(title="Runbooks", type="link", uri=CONFIG.runbook_base_url, keepTime=False,
                           icon="doc", targetBlank=True)
