"""Benchmarks that run against real servers: `make bench` (see bench/README.md)."""
