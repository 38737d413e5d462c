"""The daemon: watches folders, cloaks each new photo once with resident models, publishes it to the outbox."""
