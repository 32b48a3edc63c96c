"""What the three Depot services share: settings, logging, errors, database, S3, HTTP plumbing."""

DEPOT_VERSION = "0.1.0"
