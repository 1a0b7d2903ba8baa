"""The built-in demo provider (engine, renderer, standalone server)."""
