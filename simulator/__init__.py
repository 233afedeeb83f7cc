"""A stand-in for the tree stamping pipeline's services: real topics, real consumer groups,
real /health endpoints, for the demo, benchmarks and end-to-end tests."""
