"""Configuration: destinations from TOML, and mistakes explained."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import ConfigError, load, parse


def test_destinations_load_with_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        '[storage]\nstate_dir = "/tmp/state"\n\n'
        '[[destination]]\nname = "pacs"\nkind = "cstore"\nhost = "10.0.0.5"\nport = 11112\n'
        'called_aet = "ORTHANC"\n\n'
        '[[destination]]\nname = "archive"\nkind = "folder"\npath = "/mnt/archive"\n'
    )
    config = load(cfg)
    assert config.state_dir == Path("/tmp/state")
    pacs = config.destination("pacs")
    assert (pacs.host, pacs.port, pacs.called_aet, pacs.calling_aet) == (
        "10.0.0.5",
        11112,
        "ORTHANC",
        "EDGE",
    )
    assert config.destination("archive").path == "/mnt/archive"
    with pytest.raises(ConfigError, match=r"no destination named 'cloud'.*pacs, archive"):
        config.destination("cloud")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[[destination]]\nname = "a"\nkind = "ftp"\n', "kind 'ftp'"),
        ('[[destination]]\nname = "a"\nkind = "folder"\n', "needs path"),
        (
            '[[destination]]\nname = "a"\nkind = "cstore"\nport = "104"\n',
            "port must be a whole number",
        ),
        ('[[destination]]\nname = "a"\nkind = "cstore"\nport = 70000\n', "not 1..65535"),
        ('[[destination]]\nname = "a"\nkind = "cstore"\nhots = "x"\n', "unknown setting"),
        (
            '[[destination]]\nname = "a"\nkind = "folder"\npath = "/x"\n'
            '[[destination]]\nname = "a"\nkind = "folder"\npath = "/y"\n',
            "used twice",
        ),
        ("[outbox]\n", "unknown section"),
        ('[[destination]]\nname = "w"\nkind = "stowrs"\nurl = "ftp://x"\n', "http\\(s\\) url"),
    ],
)
def test_mistakes_name_the_setting(toml: str, message: str, tmp_path: Path) -> None:
    import tomllib

    with pytest.raises(ConfigError, match=message):
        parse(tomllib.loads(toml), "edge.toml")


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[storage\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad)
