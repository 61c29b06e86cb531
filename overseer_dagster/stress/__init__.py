"""The stress harness: preemptible internal load that keeps owned capacity busy and yields to external demand.

`allowance` (the fast loop's arithmetic), `backoff` (replicas answering garbage), `control` (targets from the
store, dead-man), `load` (live per-replica load), `workload` (the built-in request mix), `ledger` (telemetry),
`harness` (the process), `cli` (`overseer stress`).
"""
