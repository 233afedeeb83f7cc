"""Tree Stamping: Consumer groups and DLQ — the drill-down behind the overview: lag and commit progress
per group and topic, then per partition, for the chosen groups and topics, and the chosen stages' dead
letter queues.

The per-topic panels read the series the exporter reports for every group at every granularity; the
per-partition ones read the optional series (exporter.partition_series, docs/scale.md), which a group
may not have: they are below, and say so. $topic lists the topics of the per-topic series, so it has
values whatever the granularity.

Consumer group series carry group and topic (and partition) and no stage; pipeline and DLQ series carry
stage. So $group and $topic filter the group and topic panels, and $stage the DLQ panels; $stage also
narrows $group to the chosen stages' groups through tree_pipeline_stage_info (the running pipeline's
configuration), so groups outside the pipeline are not offered here."""

from __future__ import annotations

from dashboards import common as c
from dashboards.common import CONFIG, GREEN, ORANGE, RED
from exporter.metrics import GROUP_STATES

GROUP = 'group=~"$group"'
GROUP_TOPIC = 'group=~"$group", topic=~"$topic"'
TOPIC = 'topic=~"$topic"'
STAGE = 'stage=~"$stage"'
GROUP_TOPIC_LEGEND = "{{group}} {{topic}}"
PARTITION_LEGEND = "{{group}} {{topic}} [{{partition}}]"


def group_state_mappings() -> list:
    colors = {"Stable": GREEN, "PreparingRebalance": ORANGE, "CompletingRebalance": ORANGE,
              "Empty": ORANGE, "Dead": RED, "Unknown": "purple"}
    states = ((code, state, colors[state]) for code, state in enumerate(GROUP_STATES, start=1))
    return c.value_mappings((0, "not reported", "text"), *states)


def per_partition_note(detail: str) -> str:
    """What a per-partition panel's description adds: exporter.partition_series may leave its series out."""
    return (f" Empty for a group whose per-partition series are off (exporter.partition_series: {detail}, or the "
            "group left out by its groups filter; or dropped past max_series); the per-topic panels above tell "
            "the same in aggregate.")


def consumer_groups(layout: c.Layout) -> None:
    """Per group and topic first (series the exporter reports at every granularity), then the group's
    state and members, then the optional per-partition detail behind them."""
    layout.row("Consumer groups: $group")
    layout.add(c.timeseries(
        "Lag per group and topic",
        "Records each group has not consumed yet on each topic, summed over its partitions "
        "(kafka_consumer_group_topic_lag, what the stage's lag and LowThroughput add up).",
        [c.target(c.sel("kafka_consumer_group_topic_lag", GROUP_TOPIC), GROUP_TOPIC_LEGEND)], unit="short",
        links=c.runbooks("HighConsumerLag", "LowThroughput")), w=12, h=9)
    layout.add(c.timeseries(
        "Worst partition's lag per group and topic",
        "Records each group has not consumed yet on its most lagging partition of each topic "
        "(kafka_consumer_group_topic_max_lag); HighConsumerLag fires above the line.",
        [c.target(c.sel("kafka_consumer_group_topic_max_lag", GROUP_TOPIC), GROUP_TOPIC_LEGEND)], unit="short",
        thresholds=c.above(CONFIG.consumer_lag_records), links=c.runbooks("HighConsumerLag")), w=12, h=9)
    layout.add(c.timeseries(
        "Oldest unconsumed record per group and topic",
        "Age of the oldest record each group has not consumed yet on each topic, over its partitions "
        "(kafka_consumer_group_topic_max_lag_seconds; 0 without lag); ConsumerLagTooOld fires above the line.",
        [c.target(c.sel("kafka_consumer_group_topic_max_lag_seconds", GROUP_TOPIC), GROUP_TOPIC_LEGEND)],
        unit="s", thresholds=c.above(CONFIG.consumer_lag_max_age_seconds), links=c.runbooks("ConsumerLagTooOld")),
        w=8)
    layout.add(c.timeseries(
        "Partitions lagging per group and topic",
        "Partitions of each topic where the group has lag (kafka_consumer_group_topic_partitions_lagging): one "
        "hot partition (a skewed key, a poison record) or all of them (too few or too slow consumers).",
        [c.target(c.sel("kafka_consumer_group_topic_partitions_lagging", GROUP_TOPIC), GROUP_TOPIC_LEGEND)],
        unit="short", links=c.runbooks("HighConsumerLag")), w=8)
    oldest_progress = c.sel("kafka_consumer_group_topic_oldest_progress_timestamp_seconds", GROUP_TOPIC)
    layout.add(c.table(
        "Topics with lag: time since the stalest partition moved",
        "Per group and topic with lag, the time since the committed offset of its stalest lagging partition "
        "last moved. Red rows are stalled (ConsumerGroupStalled fires); the others are consuming, maybe slowly.",
        [c.target(f"time() - {oldest_progress}", instant=True, table=True)], unit="s",
        thresholds=c.above(CONFIG.consumer_stalled_seconds), hidden_columns=("Time", "__name__", "job"),
        sort_by="Value", links=c.runbooks("ConsumerGroupStalled")), w=8)
    state = c.one_hot_code("kafka_consumer_group_state", "state", GROUP_STATES, by="group", matchers=GROUP)
    layout.add(c.state_timeline(
        "Group state",
        "Each group's state as Kafka reports it: Stable is consuming; PreparingRebalance and "
        "CompletingRebalance are rebalancing; Empty has no members; Dead is gone.",
        [c.target(state, "{{group}}")], mappings=group_state_mappings(),
        links=c.runbooks("ConsumerGroupNoMembers")), w=12, h=6)
    layout.add(c.timeseries(
        "Group members",
        "Members in each group; a group without members consumes nothing (ConsumerGroupNoMembers fires "
        "when records wait for it).",
        [c.target(c.sel("kafka_consumer_group_members", GROUP), "{{group}}")], unit="short",
        thresholds=c.below(1), links=c.runbooks("ConsumerGroupNoMembers")), w=6, h=6)
    uncommitted = c.sel("kafka_consumer_group_uncommitted_partitions", GROUP_TOPIC)
    layout.add(c.stat(
        "Partitions without a committed offset",
        "Partitions the group consumes or is assigned with no committed offset yet; they are not counted "
        "as lag.",
        [c.target(uncommitted, GROUP_TOPIC_LEGEND)], unit="short", thresholds=c.above(1, ORANGE)),
        w=6, h=6)
    per_partition(layout)


def per_partition(layout: c.Layout) -> None:
    """The per-partition series: optional (exporter.partition_series), the first the series cap drops."""
    layout.row("Consumer groups per partition: $group")
    lag = c.sel("kafka_consumer_group_lag", GROUP_TOPIC)
    layout.add(c.timeseries(
        "Lag per partition",
        "Records each group has not consumed yet, per partition; HighConsumerLag fires above the line."
        + per_partition_note("detail none"),
        [c.target(lag, PARTITION_LEGEND)], unit="short", thresholds=c.above(CONFIG.consumer_lag_records),
        links=c.runbooks("HighConsumerLag")), w=12, h=9)
    layout.add(c.timeseries(
        "Lag in seconds per partition",
        "Age of the oldest record each group has not consumed yet, per partition (0 without lag); "
        "ConsumerLagTooOld fires above the line." + per_partition_note("detail lag or none"),
        [c.target(c.sel("kafka_consumer_group_lag_seconds", GROUP_TOPIC), PARTITION_LEGEND)], unit="s",
        thresholds=c.above(CONFIG.consumer_lag_max_age_seconds), links=c.runbooks("ConsumerLagTooOld")),
        w=12, h=9)
    committed = c.sel("kafka_consumer_group_committed_offset", GROUP_TOPIC)
    layout.add(c.timeseries(
        "Committed offset progress",
        "Records per second each group commits, per partition. Flat at 0 while the partition has lag: "
        "the consumer is stalled; low but moving: it is slow. Negative after an offset reset."
        + per_partition_note("detail lag or none"),
        [c.target(f"deriv({committed}[$__rate_interval])", PARTITION_LEGEND)], unit="cps", min_zero=False,
        links=c.runbooks("ConsumerGroupStalled")), w=12)
    changed = c.sel("kafka_consumer_group_committed_offset_change_timestamp_seconds", GROUP_TOPIC)
    stalled_for = f"time() - {changed}\nand on ({c.by('group', 'topic', 'partition')})\n{lag} > 0"
    layout.add(c.table(
        "Partitions with lag: time since the committed offset moved",
        "Partitions that have lag, with the time since their committed offset last moved. Red rows are "
        "stalled (ConsumerGroupStalled fires); the others are consuming, maybe slowly."
        + per_partition_note("detail lag or none"),
        [c.target(stalled_for, instant=True, table=True)], unit="s",
        thresholds=c.above(CONFIG.consumer_stalled_seconds), hidden_columns=("Time", "__name__", "job"),
        sort_by="Value", links=c.runbooks("ConsumerGroupStalled")), w=12)


def topics(layout: c.Layout) -> None:
    layout.row("Topics: $topic")
    current = c.sel("kafka_topic_partition_current_offset", TOPIC)
    oldest = c.sel("kafka_topic_partition_oldest_offset", TOPIC)
    layout.add(c.timeseries(
        "Records written per second",
        "How fast producers write to each selected topic (growth of its high watermarks); compare with "
        "the groups' commit progress above.",
        [c.target(f"sum by ({c.by('topic')}) ({c.one_replica(f'deriv({current}[$__rate_interval])')})",
                  "{{topic}}")], unit="cps",
        min_zero=False), w=12)
    layout.add(c.timeseries(
        "Retained records",
        "Records each selected topic still retains (high watermark minus log start, over its partitions).",
        [c.target(f"sum by ({c.by('topic')}) ({c.one_replica(f'{current} - {oldest}')})", "{{topic}}")],
        unit="short"), w=12)


def dead_letters(layout: c.Layout) -> None:
    layout.row("Dead letter queues: $stage")
    layout.add(c.timeseries(
        "DLQ depth", "Records retained in each selected stage's dead letter queue.",
        [c.target(c.sel("tree_dlq_retained_records", STAGE), "{{stage}} ({{topic}})")], unit="short",
        links=c.runbooks("DLQNewRecords")), w=8)
    retained = c.sel("tree_dlq_retained_records_by_error_type", STAGE)
    layout.add(c.timeseries(
        "DLQ retained by error type",
        "What each selected stage's dead letter queue holds now, by error_type, whenever it was written "
        "(also before the exporter started): the guide's 'group by error type' of the records waiting to "
        "be handled. Falls when retention or delete_records removes records; no line until the exporter "
        "has read what the queue held when it started.",
        [c.target(f"sum by ({c.by('stage', 'error_type')}) ({c.one_replica(retained)})", "{{stage}} {{error_type}}")],
        unit="short", stacked=True, links=c.runbooks("DLQRecordsUnhandled", "DLQOverflow")), w=8)
    oldest = c.sel("tree_dlq_oldest_record_timestamp_seconds", STAGE)
    layout.add(c.timeseries(
        "Oldest DLQ record age",
        "How long the oldest retained dead letter has waited for someone to handle it; no line while the "
        "queue is empty. DLQRecordsUnhandled fires above the line.",
        [c.target(f"time() - {oldest}", "{{stage}}")], unit="s",
        thresholds=c.above(CONFIG.dlq_oldest_record_max_age_seconds),
        links=c.runbooks("DLQRecordsUnhandled")), w=8)
    window = c.DLQ_OVERFLOW_WINDOW
    layout.add(c.timeseries(
        f"New DLQ records in {window}",
        f"Records written to each selected stage's dead letter queue in the last {window}, as DLQOverflow "
        "counts them; it fires above the line.",
        [c.target(c.dlq_records_written(STAGE), "{{stage}}")], unit="short",
        thresholds=c.above(CONFIG.dlq_overflow_records_5m), links=c.runbooks("DLQOverflow")), w=8)
    records = c.sel("tree_dlq_records_total", STAGE)
    layout.add(c.timeseries(
        "Error types over time",
        f"New dead letters per second by stage and error_type: {c.DLQ_RECORDS_SINCE_FIRST_SEEN}",
        [c.target(f"sum by ({c.by('stage', 'error_type')}) ({c.one_replica(f'rate({records}[$__rate_interval])')})",
                  "{{stage}} {{error_type}}")],
        unit="cps", stacked=True, bars=True, links=c.runbooks("DLQNewRecords")), w=16)
    layout.add(c.table(
        "New dead letters by error type in the selected range",
        "Dead letters written per stage and error_type during the selected time range, most frequent "
        f"first: {c.DLQ_RECORDS_SINCE_FIRST_SEEN} What the queue holds now is 'DLQ retained by error type'.",
        [c.target(f"sum by ({c.by('stage', 'error_type')}) ({c.one_replica(f'increase({records}[$__range])')})",
                  instant=True, table=True)],
        unit="short", sort_by="Value", links=c.runbooks("DLQNewRecords")), w=8)
    layout.add(c.timeseries(
        "Events in flight", "Requests of each selected stage not yet completed or failed.",
        [c.target(c.sel("tree_events_in_flight", STAGE), "{{stage}}")], unit="short"), w=8)
    failed = c.sel("tree_events_processed_total", f'status="failed", {STAGE}')
    layout.add(c.timeseries(
        "Failed per second",
        "Events per second read from each selected stage's failed topic; the ones no retry saves end up "
        "in the dead letter queue.",
        [c.target(f"sum by ({c.by('stage')}) ({c.one_replica(f'rate({failed}[$__rate_interval])')})", "{{stage}}")],
        unit="reqps", links=c.runbooks("HighErrorRate")), w=8)


def build() -> c.Dashboard:
    layout = c.Layout()
    consumer_groups(layout)
    topics(layout)
    dead_letters(layout)
    return c.dashboard(
        uid=c.GROUPS_DLQ_UID,
        title="Tree Stamping: Consumer groups and DLQ",
        description="Drill-down per consumer group, topic and stage: lag per topic and per partition, commit "
        "progress, stalled topics and partitions, group state and members, DLQ depth, age, retained and new "
        "error types.",
        layout=layout,
        variables=[
            c.query_variable("stage", "Stage", "tree_events_in_flight"),
            c.query_variable("group", "Consumer group", "tree_pipeline_stage_info", matchers=STAGE),
            c.query_variable("topic", "Topic", "kafka_consumer_group_topic_lag", matchers=GROUP),
        ],
        links=[c.dashboard_link("Overview", c.OVERVIEW_UID), c.runbook_dashboard_link()],
    )
