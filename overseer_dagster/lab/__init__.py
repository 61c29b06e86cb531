"""The fleet lab: an emulated vLLM fleet (replicas + gateway) over real HTTP on loopback.

It is a separate world: the overseer never imports it. It speaks vLLM's OpenAI API and metrics so the
overseer's real adapters talk to it as to production (`make demo`, integration tests, benchmarks).

Modules: `engine` (slots, queue, decode steps), `replica` (one vLLM-like HTTP server), `gateway` (the router
and the `/fleet/state` oracle), `traffic` (open-loop load), `runtime` (the `Lab`), `scenario` (timed faults and
traffic from a JSON file), `cli` (`lab up`, `bench lab`).
"""
