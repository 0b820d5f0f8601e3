"""Appliance configuration: one TOML file, frozen dataclasses, every setting documented.

Only what forwarding needs is here so far (storage and destinations); ingest, web and the rest
arrive with the daemon. Mistakes are reported with the file, the key and what was expected.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import EdgeError

DEFAULT_PATH = Path("/etc/edge/edge.toml")
KINDS = ("cstore", "stowrs", "folder")


class ConfigError(EdgeError):
    """The configuration file is missing, unreadable or wrong."""


@dataclass(frozen=True)
class Destination:
    """One place slides are forwarded to (`[[destination]]`)."""

    name: str  # unique; used by `edge send --to NAME` and in the outbox
    kind: str  # "cstore" (DIMSE C-STORE), "stowrs" (DICOMweb STOW-RS) or "folder"
    host: str = "127.0.0.1"  # cstore: the PACS host
    port: int = 104  # cstore: the PACS port
    called_aet: str = "ANY-SCP"  # cstore: the PACS's AE title
    calling_aet: str = "EDGE"  # cstore: our AE title
    timeout_s: float = 30.0  # cstore, stowrs: network timeout per operation
    path: str = ""  # folder: where instances are written (<study>/<series>/<sop>.dcm)
    url: str = ""  # stowrs: the DICOMweb root, e.g. https://pacs.example/dicom-web
    token_file: str = ""  # stowrs: file holding a bearer token (re-read on every request)
    max_request_bytes: int = 1 << 30  # stowrs: split series into requests of at most this
    tls: bool = False  # cstore: use TLS (BCP 195); stowrs: implied by an https url
    tls_ca_file: str = ""  # cstore, stowrs: CA bundle to verify the peer (default: system CAs)
    tls_cert_file: str = ""  # cstore, stowrs: our certificate, for mutual TLS (PEM)
    tls_key_file: str = ""  # cstore, stowrs: its private key (PEM, readable only by edge)
    deidentify: str = ""  # "": identified data; "basic": PS3.15 basic profile (docs/privacy.md)
    deidentify_options: tuple[str, ...] = ()  # e.g. ["retain-modified-dates"] (docs/privacy.md)


@dataclass(frozen=True)
class Analysis:
    """QC and triage (`[analysis]`). Fractions are of the slide's tissue area."""

    backend: str = "auto"  # auto (TensorRT, ORT-TensorRT, ORT-CUDA, PyTorch-CUDA, ORT-CPU) or one
    models_dir: str = ""  # folder of the QC models (default: the shipped models/)
    engine_cache_dir: str = ""  # TensorRT engines (default: <state_dir>/engines)
    threads: int = 0  # CPU inference threads (0: one per core)
    blur_rescan: float = 0.10  # rescan when at least this much tissue is out of focus
    pen_rescan: float = 0.05  # rescan when at least this much tissue is under pen marks
    fold_rescan: float = 0.05  # rescan when at least this much tissue is folded
    bubble_rescan: float = 0.05  # rescan when at least this much tissue is under air bubbles
    debris_review: float = 0.05  # review when at least this much tissue is under debris
    edge_review: float = 0.05  # review when at least this much tissue lies past a coverslip edge
    review_share: float = 0.6  # review when a finding reaches this share of its rescan limit


@dataclass(frozen=True)
class Privacy:
    """De-identification (`[privacy]`)."""

    secret_file: str = ""  # site secret for pseudonyms and UIDs (mode 600; never logged)


@dataclass(frozen=True)
class Config:
    state_dir: Path = Path("/var/lib/edge")  # [storage] state_dir: outbox database, work files
    batch_size: int = 20  # [forward] batch_size: instances per association / request
    retry_base_s: float = 5.0  # [forward] retry_base_s: first retry delay
    retry_ceiling_s: float = 3600.0  # [forward] retry_ceiling_s: longest retry delay
    destinations: tuple[Destination, ...] = field(default_factory=tuple)
    analysis: Analysis = field(default_factory=Analysis)  # [analysis]
    privacy: Privacy = field(default_factory=Privacy)  # [privacy]

    def destination(self, name: str) -> Destination:
        for dest in self.destinations:
            if dest.name == name:
                return dest
        names = ", ".join(d.name for d in self.destinations) or "none configured"
        raise ConfigError(f"no destination named {name!r} (configured: {names})")


def _typed(where: str, table: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = table.get(key, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        wanted = {int: "a whole number", float: "a number", str: "text"}.get(kind, kind.__name__)
        raise ConfigError(f"{where}: {key} must be {wanted}, found {value!r}")
    return value


def load(path: Path) -> Config:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such configuration file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse(data, str(path))


def parse(data: dict[str, Any], source: str = "config") -> Config:
    known = {"storage", "forward", "destination", "analysis", "privacy"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {unknown}; expected {sorted(known)}")
    storage = data.get("storage", {})
    forward = data.get("forward", {})
    dests = []
    seen: set[str] = set()
    for i, table in enumerate(data.get("destination", [])):
        where = f"{source}: [[destination]] #{i + 1}"
        name = _typed(where, table, "name", str, "")
        kind = _typed(where, table, "kind", str, "")
        if not name:
            raise ConfigError(f"{where}: name is required")
        if name in seen:
            raise ConfigError(f"{where}: the name {name!r} is used twice")
        seen.add(name)
        if kind not in KINDS:
            raise ConfigError(f"{where} ({name}): kind {kind!r}; expected one of {KINDS}")
        fields = {f for f in Destination.__dataclass_fields__}
        extra = sorted(set(table) - fields)
        if extra:
            raise ConfigError(f"{where} ({name}): unknown setting(s) {extra}")
        dest = Destination(
            name=name,
            kind=kind,
            host=_typed(where, table, "host", str, "127.0.0.1"),
            port=_typed(where, table, "port", int, 104),
            called_aet=_typed(where, table, "called_aet", str, "ANY-SCP"),
            calling_aet=_typed(where, table, "calling_aet", str, "EDGE"),
            timeout_s=_typed(where, table, "timeout_s", float, 30.0),
            path=_typed(where, table, "path", str, ""),
            url=_typed(where, table, "url", str, ""),
            token_file=_typed(where, table, "token_file", str, ""),
            max_request_bytes=_typed(where, table, "max_request_bytes", int, 1 << 30),
            tls=_typed(where, table, "tls", bool, False),
            tls_ca_file=_typed(where, table, "tls_ca_file", str, ""),
            tls_cert_file=_typed(where, table, "tls_cert_file", str, ""),
            tls_key_file=_typed(where, table, "tls_key_file", str, ""),
            **_deidentify(where, name, table),
        )
        if kind == "stowrs" and not dest.url.startswith(("http://", "https://")):
            raise ConfigError(f"{where} ({name}): a stowrs destination needs an http(s) url")
        if kind == "stowrs" and dest.max_request_bytes < 1 << 20:
            raise ConfigError(f"{where} ({name}): max_request_bytes must be at least 1 MiB")
        if bool(dest.tls_cert_file) != bool(dest.tls_key_file):
            raise ConfigError(f"{where} ({name}): tls_cert_file and tls_key_file go together")
        if kind == "folder" and not dest.path:
            raise ConfigError(f"{where} ({name}): a folder destination needs path")
        if kind == "cstore" and not 0 < dest.port < 65536:
            raise ConfigError(f"{where} ({name}): port {dest.port} is not 1..65535")
        if kind == "cstore" and not 0 < len(dest.called_aet) <= 16:
            raise ConfigError(f"{where} ({name}): called_aet must be 1..16 characters")
        dests.append(dest)
    analysis = _analysis(data.get("analysis", {}), f"{source}: [analysis]")
    privacy = _privacy(data.get("privacy", {}), f"{source}: [privacy]", dests)
    return Config(
        analysis=analysis,
        privacy=privacy,
        state_dir=Path(_typed(f"{source}: [storage]", storage, "state_dir", str, "/var/lib/edge")),
        batch_size=_typed(f"{source}: [forward]", forward, "batch_size", int, 20),
        retry_base_s=_typed(f"{source}: [forward]", forward, "retry_base_s", float, 5.0),
        retry_ceiling_s=_typed(f"{source}: [forward]", forward, "retry_ceiling_s", float, 3600.0),
        destinations=tuple(dests),
    )


_FRACTIONS = (
    "blur_rescan",
    "pen_rescan",
    "fold_rescan",
    "bubble_rescan",
    "debris_review",
    "edge_review",
    "review_share",
)


def _analysis(table: dict[str, Any], where: str) -> Analysis:
    fields = set(Analysis.__dataclass_fields__)
    extra = sorted(set(table) - fields)
    if extra:
        raise ConfigError(f"{where}: unknown setting(s) {extra}; expected some of {sorted(fields)}")
    defaults = Analysis()
    values: dict[str, Any] = {}
    for name in fields:
        default = getattr(defaults, name)
        values[name] = _typed(where, table, name, type(default), default)
    for name in _FRACTIONS:
        if not 0.0 < values[name] <= 1.0:
            raise ConfigError(f"{where}: {name} must be a fraction above 0 and at most 1")
    if values["threads"] < 0:
        raise ConfigError(f"{where}: threads must be 0 (one per core) or more")
    return Analysis(**values)


def _deidentify(where: str, name: str, table: dict[str, Any]) -> dict[str, Any]:
    from edge.deid.policy import DeidError, check_options, check_profile

    profile = _typed(where, table, "deidentify", str, "")
    options = _typed(where, table, "deidentify_options", list, [])
    try:
        if profile:
            check_profile(profile, f"{where} ({name}): deidentify")
        if options and not profile:
            raise DeidError(f'{where} ({name}): deidentify_options needs deidentify = "basic"')
        if not all(isinstance(o, str) for o in options):
            raise DeidError(f"{where} ({name}): deidentify_options must be a list of names")
        checked = check_options(options, f"{where} ({name}): deidentify_options")
        if "retain-uids" in checked:
            # The outbox keys instances by SOP Instance UID: a copy that keeps it would be
            # taken for the identified instance, and the identified file sent instead.
            raise DeidError(
                f"{where} ({name}): deidentify_options: retain-uids cannot be used for a "
                "destination (the outbox would mistake the copy for the identified instance); "
                "it is available to `edge deidentify` only"
            )
    except DeidError as exc:
        raise ConfigError(str(exc)) from exc
    return {"deidentify": profile, "deidentify_options": checked}


def _privacy(table: dict[str, Any], where: str, dests: list[Destination]) -> Privacy:
    from edge.secrets import SecretError, read_secret

    extra = sorted(set(table) - set(Privacy.__dataclass_fields__))
    if extra:
        raise ConfigError(f"{where}: unknown setting(s) {extra}; expected secret_file")
    secret_file = _typed(where, table, "secret_file", str, "")
    needing = [d.name for d in dests if d.deidentify]
    if needing and not secret_file:
        raise ConfigError(f"{where}: secret_file is required: {needing} de-identify")
    if secret_file:
        from edge.deid.keyed import MIN_SECRET_BYTES

        try:
            secret = read_secret(Path(secret_file), f"{where} secret_file")  # read again when used
        except SecretError as exc:
            raise ConfigError(str(exc)) from exc
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"{where}: {secret_file} holds {len(secret)} bytes; at least {MIN_SECRET_BYTES} "
                "are needed (head -c 32 /dev/urandom > FILE)"
            )
    return Privacy(secret_file=secret_file)
