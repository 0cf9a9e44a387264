"""Shared test helpers; the Kafka fixtures come from the streamguard pytest plugin (pytest11)."""
