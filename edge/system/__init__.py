"""What the appliance needs from the operating system: systemd notification and watchdog,
mDNS announcement and discovery, disk watermarks. Small, typed, no daemon logic here."""
