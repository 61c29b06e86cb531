"""Dagster wiring only: resources, assets, checks, jobs, schedules, sensors."""
