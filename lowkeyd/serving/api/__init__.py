"""The local API (the daemon's, and lowkeyd serve's ingress): its routes and OpenAPI description, the server that serves them, and the client of it.

Importing this package loads nothing: ``client`` (used by ``lowkeyd cloak``) needs httpx alone,
``routes`` and ``server`` bring in the web stack.
"""
