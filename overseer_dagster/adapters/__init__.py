"""The outside world behind small protocols: fleet sources, ledger, minds, actuators."""
