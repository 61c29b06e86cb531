"""overseer_dagster: an autonomous, approval-gated overseer for self-hosted LLM inference fleets."""

__version__ = "0.1.0"
