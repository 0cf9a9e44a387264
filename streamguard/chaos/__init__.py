"""Fault injection for chaos tests: a Toxiproxy-style TCP proxy and an independent invariant checker."""
