"""The daemon's integration with the operating system: systemd and launchd services, their installer, desktop notifications."""
