"""Appliance configuration: one TOML file, frozen dataclasses, every setting documented.

Each setting is a dataclass field with a default and a trailing comment that documents it;
tools/config_reference.py turns those comments into docs/config.md (a test keeps the two in
step). Mistakes are reported with the file, the key and what was expected.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import EdgeError

DEFAULT_PATH = Path("/etc/edge/edge.toml")
KINDS = ("cstore", "stowrs", "folder")
FORMATS = ("jpeg", "jpeg2000", "htj2k", "jpegxl")  # as edge.dicom.encode.FORMATS


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
class Ingest:
    """Where slides come from (`[ingest]`)."""

    watch: tuple[str, ...] = ()  # scanner output folders to watch (local or mounted)
    settle_s: float = 10.0  # a slide is finished once its size and mtime stay still this long
    poll_s: float = 2.0  # how often the folders are scanned (shares send no inotify events)
    extensions: tuple[str, ...] = (".svs", ".ndpi", ".tif", ".tiff", ".dcm")  # slide files
    ready_marker: str = ""  # if set (e.g. ".done"), a slide waits until SLIDE + marker exists
    sidecar: bool = True  # take patient/order data from SLIDE.json beside the slide if present
    quarantine_dir: str = ""  # move unreadable slides here (default: leave them in place)


@dataclass(frozen=True)
class Storage:
    """Local data (`[storage]`); state_dir itself is Config.state_dir."""

    slides_dir: str = ""  # converted slides (default: <state_dir>/slides)
    retention_days: float = 7.0  # delete converted files this long after every destination has them
    high_water: float = 0.90  # pause ingest when the disk holding the slides is this full
    low_water: float = 0.85  # resume ingest once it is back below this


@dataclass(frozen=True)
class Pipeline:
    """Conversion (`[pipeline]`)."""

    slides_in_flight: int = 1  # slides converted at once (each uses ~1 GB at most)
    analyse: bool = True  # run QC and triage in the conversion pass
    format: str = "jpeg"  # codec for levels that must be encoded: jpeg, jpeg2000, htj2k, jpegxl
    quality: int = 95  # quality of those levels (1-100)
    max_attempts: int = 3  # a slide that fails this many times (not unreadable: crashes) is parked


@dataclass(frozen=True)
class Web:
    """The dashboard and API (`[web]`)."""

    listen: str = "127.0.0.1:8080"  # address:port; localhost only unless set otherwise
    enabled: bool = True  # serve the dashboard from `edge run` (`edge web serve` runs it alone)
    open_view: bool = False  # let clients on this machine (loopback) view pages without a login
    users_file: str = ""  # dashboard users, hashed passwords (default: <state_dir>/web-users.json)
    session_hours: float = 12.0  # a login lasts this long
    tls_cert_file: str = ""  # serve HTTPS with this certificate (PEM); empty: plain HTTP
    tls_key_file: str = ""  # its private key (PEM, readable only by edge)


@dataclass(frozen=True)
class Config:
    state_dir: Path = Path("/var/lib/edge")  # [storage] state_dir: state database, work files
    batch_size: int = 20  # [forward] batch_size: instances per association / request
    retry_base_s: float = 5.0  # [forward] retry_base_s: first retry delay
    retry_ceiling_s: float = 3600.0  # [forward] retry_ceiling_s: longest retry delay
    destinations: tuple[Destination, ...] = field(default_factory=tuple)  # [[destination]]
    analysis: Analysis = field(default_factory=Analysis)  # [analysis]
    ingest: Ingest = field(default_factory=Ingest)  # [ingest]
    storage: Storage = field(default_factory=Storage)  # [storage]
    pipeline: Pipeline = field(default_factory=Pipeline)  # [pipeline]
    web: Web = field(default_factory=Web)  # [web]

    @property
    def slides_dir(self) -> Path:
        return (
            Path(self.storage.slides_dir) if self.storage.slides_dir else self.state_dir / "slides"
        )

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
    known = {"storage", "forward", "destination", "analysis", "ingest", "pipeline", "web"}
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
    storage_where = f"{source}: [storage]"
    return Config(
        analysis=analysis,
        ingest=_ingest(data.get("ingest", {}), f"{source}: [ingest]"),
        storage=_storage({k: v for k, v in storage.items() if k != "state_dir"}, storage_where),
        pipeline=_pipeline(data.get("pipeline", {}), f"{source}: [pipeline]"),
        web=_web(data.get("web", {}), f"{source}: [web]"),
        state_dir=Path(_typed(storage_where, storage, "state_dir", str, "/var/lib/edge")),
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


def _section(cls: type[Any], table: dict[str, Any], where: str) -> dict[str, Any]:
    """The settings of one [section] typed like cls's defaults; unknown keys are mistakes."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table of settings, found {table!r}")
    fields = set(cls.__dataclass_fields__)
    extra = sorted(set(table) - fields)
    if extra:
        raise ConfigError(f"{where}: unknown setting(s) {extra}; expected some of {sorted(fields)}")
    defaults = cls()
    values: dict[str, Any] = {}
    for name in fields:
        default = getattr(defaults, name)
        if isinstance(default, tuple):
            value = table.get(name, list(default))
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}: {name} must be a list of text, found {value!r}")
            values[name] = tuple(value)
        else:
            values[name] = _typed(where, table, name, type(default), default)
    return values


def _ingest(table: dict[str, Any], where: str) -> Ingest:
    values = _section(Ingest, table, where)
    if values["settle_s"] < 0 or values["poll_s"] <= 0:
        raise ConfigError(f"{where}: settle_s must be >= 0 and poll_s > 0")
    values["extensions"] = tuple(
        e.lower() if e.startswith(".") else f".{e.lower()}" for e in values["extensions"]
    )
    return Ingest(**values)


def _storage(table: dict[str, Any], where: str) -> Storage:
    values = _section(Storage, table, where)
    if not 0.0 < values["low_water"] < values["high_water"] <= 1.0:
        raise ConfigError(f"{where}: need 0 < low_water < high_water <= 1 (fractions of the disk)")
    if values["retention_days"] < 0:
        raise ConfigError(f"{where}: retention_days must be 0 or more")
    return Storage(**values)


def _pipeline(table: dict[str, Any], where: str) -> Pipeline:
    values = _section(Pipeline, table, where)
    if values["slides_in_flight"] < 1 or values["max_attempts"] < 1:
        raise ConfigError(f"{where}: slides_in_flight and max_attempts must be at least 1")
    if values["format"] not in FORMATS:
        raise ConfigError(f"{where}: format {values['format']!r}; expected one of {FORMATS}")
    if not 1 <= values["quality"] <= 100:
        raise ConfigError(f"{where}: quality must be 1..100")
    return Pipeline(**values)


def _web(table: dict[str, Any], where: str) -> Web:
    values = _section(Web, table, where)
    host, _, port = values["listen"].rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: listen must be ADDRESS:PORT, found {values['listen']!r}")
    if bool(values["tls_cert_file"]) != bool(values["tls_key_file"]):
        raise ConfigError(f"{where}: tls_cert_file and tls_key_file go together")
    if not 0 < values["session_hours"] <= 24 * 30:
        raise ConfigError(f"{where}: session_hours must be above 0 and at most 720 (30 days)")
    return Web(**values)


def _analysis(table: dict[str, Any], where: str) -> Analysis:
    values = _section(Analysis, table, where)
    for name in _FRACTIONS:
        if not 0.0 < values[name] <= 1.0:
            raise ConfigError(f"{where}: {name} must be a fraction above 0 and at most 1")
    if values["threads"] < 0:
        raise ConfigError(f"{where}: threads must be 0 (one per core) or more")
    return Analysis(**values)
