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


def test_analysis_section_defaults_and_overrides() -> None:
    from edge.analysis.qc import Thresholds

    default = parse({}).analysis
    assert (default.backend, default.blur_rescan, default.pen_rescan) == ("auto", 0.10, 0.05)
    custom = parse({"analysis": {"backend": "ort-cpu", "blur_rescan": 0.2, "pen_rescan": 1}})
    assert custom.analysis.backend == "ort-cpu"
    thresholds = Thresholds.from_config(custom.analysis)
    assert thresholds.rescan["blur"] == 0.2 and thresholds.rescan["pen"] == 1.0
    assert thresholds.rescan["fold"] == 0.05 and thresholds.rescan["debris"] is None


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"blur_threshold": 0.1}, r"\[analysis\]: unknown setting\(s\) \['blur_threshold'\]"),
        ({"blur_rescan": 0}, r"blur_rescan must be a fraction above 0 and at most 1"),
        ({"review_share": 1.5}, r"review_share must be a fraction"),
        ({"pen_rescan": "5%"}, r"pen_rescan must be a number, found '5%'"),
        ({"threads": -1}, r"threads must be 0"),
    ],
)
def test_analysis_section_mistakes_are_explained(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse({"analysis": table}, "edge.toml")


def test_every_setting_is_documented_and_the_reference_is_current() -> None:
    from edge import config_doc

    keys = {(s.table, s.key) for s in config_doc.settings()}
    assert {("ingest", "watch"), ("storage", "state_dir"), ("web", "listen")} <= keys
    assert ("destination", "url") in keys
    reference = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert reference.read_text(encoding="utf-8") == config_doc.render(), (
        "docs/config.md is stale: run `python -m edge.config_doc > docs/config.md`"
    )


def test_an_undocumented_setting_fails_the_reference(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from edge import config_doc

    source = config_doc.SOURCE.read_text(encoding="utf-8")
    undocumented = tmp_path / "config.py"
    undocumented.write_text(
        source.replace("  # address:port; localhost only unless set otherwise", "")
    )
    monkeypatch.setattr(config_doc, "SOURCE", undocumented)
    with pytest.raises(ValueError, match=r"Web\.listen"):
        config_doc.settings()


def test_daemon_sections_parse_and_explain_mistakes() -> None:
    import tomllib

    config = parse(
        tomllib.loads(
            '[ingest]\nwatch = ["/srv/scanner"]\nextensions = ["SVS", ".ndpi"]\n'
            '[storage]\nstate_dir = "/data"\nretention_days = 2\n'
            '[pipeline]\nslides_in_flight = 2\n[web]\nlisten = "0.0.0.0:8443"\n'
        ),
        "edge.toml",
    )
    assert config.ingest.watch == ("/srv/scanner",)
    assert config.ingest.extensions == (".svs", ".ndpi")
    assert config.slides_dir == Path("/data/slides")
    assert config.storage.retention_days == 2.0
    assert (config.pipeline.slides_in_flight, config.web.listen) == (2, "0.0.0.0:8443")
    for toml, message in [
        ('[ingest]\nwatch = "/srv"\n', "watch must be a list of text"),
        ("[storage]\nhigh_water = 0.5\nlow_water = 0.6\n", "low_water < high_water"),
        ('[web]\nlisten = "8080"\n', "ADDRESS:PORT"),
        ('[pipeline]\nformat = "png"\n', "format 'png'"),
        ("[ingest]\nwatchh = []\n", r"unknown setting\(s\) \['watchh'\]"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse(tomllib.loads(toml), "edge.toml")


def test_secret_files_can_come_from_systemd_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tomllib

    toml = (
        '[[destination]]\nname = "cloud"\nkind = "stowrs"\nurl = "https://x/dicom-web"\n'
        'token_file = "credential:cloud-token"\n'
    )
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError, match="needs systemd's LoadCredential"):
        parse(tomllib.loads(toml), "edge.toml")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    config = parse(tomllib.loads(toml), "edge.toml")
    assert config.destination("cloud").token_file == str(tmp_path / "cloud-token")
    with pytest.raises(ConfigError, match="not a credential name"):
        parse(tomllib.loads(toml.replace("cloud-token", "../etc/shadow")), "edge.toml")
