"""The daemon: watches folders, cloaks each new photo once with resident models, publishes it to the outbox.

Its own modules are the daemon proper (config, watching, state, outbox, worker, jobs, service);
``api`` is the local API other tools reach it by, ``system`` its place in the operating system
(service managers, notifications), ``status_page`` what the browser shows.
"""
