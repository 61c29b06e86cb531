"""Pure domain: models, vocabulary, authority, parsing, policy, decisions. No Dagster, no I/O, no clock reads."""
