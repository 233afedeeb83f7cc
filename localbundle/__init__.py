"""The whole bundle run locally, on this machine, for real: a Kafka from the pinned jars, the
simulated pipeline, the exporter, Prometheus with the generated rules, Alertmanager with the
generated routing and a stand-in for Slack (stack.py), incidents driven through that chain and
read back from Slack (drill.py, against what each must page: incident_alerts.py), and the demo's
story on top (demo.py). ``treewatch demo`` and the end-to-end tests run it from here.

Below the command line, above everything it assembles: it imports alerts, dashboards, exporter,
simulator, pipeline and devkafka; only treewatch/ (and tests) import it.
"""
