"""Async image jobs: submit with ``Prefer: respond-async``, poll, cancel (see README, Jobs)."""
