"""The daemon: watches folders, cloaks each new photo once with resident models, publishes it to the outbox.

Its own modules are the daemon proper (config, watching, state, follow, hooks, service, remote offloading);
it runs on :mod:`lowkeyd.serving` (worker, jobs, outbox, the local API). ``system`` is its place in the
operating system (service managers, notifications), ``status_page`` what the browser shows.
"""
