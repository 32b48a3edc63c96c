"""Local tooling: embedded PostgreSQL and S3 servers, the front door, and `make run`."""
