"""A QRC-speaking Q-SYS Core simulator for tests, benchmarks and demos."""
