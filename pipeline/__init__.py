"""The ground floor: the tree stamping pipeline's model (configuration, topics, groups, event
envelopes) and the ways to reach it (Kafka clients, health probes). Imports libraries only."""
