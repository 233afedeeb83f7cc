"""The Prometheus exporter: gather (sources) → snapshot → render → serve."""
