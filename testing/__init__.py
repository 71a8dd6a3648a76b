"""Property-based testing kit for heteropass passes and backends."""
