"""Serving: the resident models' worker, the jobs it runs, the outbox they publish to, and the local API.

What the daemon (watched folders) and the cluster (Ray Serve) share; it imports neither of them, and both
stand on it side by side. ``api`` is the HTTP API other tools reach either by.
"""
