"""Backends: code generation and execution of partitions."""
