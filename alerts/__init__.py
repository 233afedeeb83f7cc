"""Alert rules and Alertmanager configuration as code, generated from one config object."""
