"""The ledger schema's revisions, oldest first by their ``NNNN`` ids."""
