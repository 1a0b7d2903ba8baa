"""Fake provider servers: each speaks one provider's wire format on loopback.

They are real aiohttp servers (``aiohttp_server`` fixture), serving real PNGs
from the demo renderer, so the end-to-end tests run the gateway's real relay,
transport and adapters against bytes shaped like the provider's own.
"""
