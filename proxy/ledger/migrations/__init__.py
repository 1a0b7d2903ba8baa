"""Alembic's script directory for the ledger schema (see ``pixelgate.proxy.ledger.migrate``).

A package so that it ships with Pixelgate and is type-checked; Alembic itself
loads ``env.py`` and the revisions by path.
"""
