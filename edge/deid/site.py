"""The appliance's settings turned into what the entry points take (for the daemon and CLI)."""

from __future__ import annotations

from pathlib import Path

from edge.config import Config, ConfigError, Destination
from edge.deid.policy import Policy, policy
from edge.deid.stream import check_secret
from edge.secrets import read_secret


def destination_policy(dest: Destination) -> Policy | None:
    """The destination's de-identification policy; None when it receives identified data."""
    if not dest.deidentify:
        return None
    return policy(dest.deidentify, dest.deidentify_options, f"destination {dest.name}")


def site_secret(config: Config) -> bytes:
    """The site secret from [privacy] secret_file, permissions and length checked."""
    if not config.privacy.secret_file:
        raise ConfigError("[privacy] secret_file is not set")
    secret = read_secret(Path(config.privacy.secret_file), "[privacy] secret_file")
    check_secret(secret)
    return secret
