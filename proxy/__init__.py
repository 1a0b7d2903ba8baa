"""The server: HTTP handlers, routing, relay, access control, config."""
