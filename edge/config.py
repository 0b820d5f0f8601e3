"""Appliance configuration: one TOML file, frozen dataclasses, every setting documented.

Each setting is a dataclass field with a default and a trailing comment that documents it;
`python -m edge.config_doc` turns those comments into docs/config.md (a test keeps the two in
step). Mistakes are reported with the file, the key and what was expected.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edge.errors import EdgeError
from edge.forward.windows import WindowError, parse_window

DEFAULT_PATH = Path("/etc/edge/edge.toml")
KINDS = ("cstore", "stowrs", "folder")
FORMATS = ("jpeg", "jpeg2000", "htj2k", "jpegxl")  # as edge.dicom.encode.FORMATS
AUTHS = ("bearer", "basic", "google", "aws-sigv4")


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
    tls_pin_file: str = ""  # cstore, stowrs: accept only this exact peer certificate (PEM)
    auth: str = ""  # stowrs: bearer, basic, google or aws-sigv4 ("": from token_file/username)
    username: str = ""  # stowrs basic: the user name
    password_file: str = ""  # stowrs basic: file holding the password (mode 600: not group/other)
    credentials_file: str = ""  # stowrs google: service-account JSON key; aws-sigv4: INI (600)
    aws_profile: str = "default"  # stowrs aws-sigv4: the [profile] in credentials_file
    region: str = ""  # stowrs aws-sigv4: the AWS region, e.g. us-east-1
    aws_service: str = "medical-imaging"  # stowrs aws-sigv4: the service name signed for
    max_bytes_per_s: int = 0  # all kinds: bandwidth cap in bytes per second (0: unlimited)
    max_instance_bytes: int = 0  # all kinds: WSI instances above it go as concatenation parts
    adaptive: bool = True  # stowrs: request size and concurrency follow the measured link
    send_windows: tuple[str, ...] = ()  # all kinds: local "HH:MM-HH:MM" times to send (): always
    deidentify: str = ""  # "": identified data; "basic": PS3.15 basic profile (docs/privacy.md)
    deidentify_options: tuple[str, ...] = ()  # e.g. ["retain-modified-dates"] (docs/privacy.md)


@dataclass(frozen=True)
class Analysis:
    """QC and triage (`[analysis]`). Fractions are of the slide's tissue area."""

    backend: str = "auto"  # auto (TensorRT, ORT-TensorRT, ORT-CUDA, PyTorch-CUDA, ORT-CPU) or one
    models_dir: str = ""  # folder of the QC models (default: the shipped models/)
    engine_cache_dir: str = ""  # TensorRT engines (default: <state_dir>/engines)
    threads: int = 0  # CPU inference threads (0: one per core)
    lower_level: bool = False  # read the scanner's own ~1 µm/px level, not level 0 (faster)
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
    settle_s: float = 10.0  # finished once size and mtime stay still this long (no marker)
    poll_s: float = 2.0  # how often the folders are scanned (shares send no inotify events)
    extensions: tuple[str, ...] = (".svs", ".ndpi", ".tif", ".tiff", ".dcm")  # slide files
    ready_marker: str = ""  # if set (e.g. ".done"), a slide is taken once SLIDE + marker exists
    sidecar: bool = True  # take patient/order data from SLIDE.json beside the slide if present
    quarantine_dir: str = ""  # move unreadable slides here (default: leave them in place)


@dataclass(frozen=True)
class Receiver:
    """DICOM C-STORE receiver for DICOM-native scanners (`[receiver]`)."""

    port: int = 0  # listen on this port (0: no receiver)
    listen: str = "0.0.0.0"  # address to listen on (the scanner's network)
    ae_title: str = "EDGE"  # our AE title; scanners must call it
    allowed_aets: tuple[str, ...] = ()  # calling AE titles accepted (empty: any)
    settle_s: float = 30.0  # a series is a finished slide once no instance arrived this long


@dataclass(frozen=True)
class Worklist:
    """Patient and order data from the lab's Modality Worklist (`[worklist]`)."""

    host: str = ""  # worklist SCP host (empty: no lookup; sidecar files still work)
    port: int = 104  # its port
    called_aet: str = "WORKLIST"  # its AE title
    calling_aet: str = "EDGE"  # our AE title
    match: str = "AccessionNumber"  # worklist key the slide barcode is matched against
    timeout_s: float = 10.0  # give up (slide flagged unmatched) after this long


@dataclass(frozen=True)
class Audit:
    """The audit trail's export as DICOM audit messages over syslog-TLS (`[audit]`)."""

    syslog: str = ""  # collector HOST:PORT (RFC 5425 TLS; empty: the trail stays local)
    tls_ca_file: str = ""  # CA bundle that signed the collector's certificate
    tls_cert_file: str = ""  # our certificate, when the collector wants mutual TLS (PEM)
    tls_key_file: str = ""  # its private key (PEM, readable only by edge)
    source_id: str = ""  # AuditSourceID in each message (default: the host name)


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
    discover_s: float = 60.0  # look for PACS and hubs on the LAN (mDNS) this often; 0: never


@dataclass(frozen=True)
class Privacy:
    """De-identification (`[privacy]`)."""

    secret_file: str = ""  # site secret for pseudonyms and UIDs (mode 600; never logged)


@dataclass(frozen=True)
class HubSite:
    """One appliance allowed to send to this hub (`[[hub.site]]`)."""

    name: str  # the site's name: its folder under store_dir and its line in the status
    token_file: str  # file holding the site's bearer token (mode 600; never logged)


@dataclass(frozen=True)
class Hub:
    """The hub role: STOW-RS in from site appliances (`[hub]`, docs/hub.md)."""

    listen: str = ""  # ADDRESS:PORT to receive STOW-RS on, e.g. "0.0.0.0:8042" ("": no hub)
    tls_cert_file: str = ""  # serve HTTPS with this certificate (PEM); empty: plain HTTP
    tls_key_file: str = ""  # its private key (PEM, readable only by edge)
    store_dir: str = ""  # where received instances are kept (default: <state_dir>/hub)
    forward: bool = False  # queue every received instance for all [[destination]]s
    max_request_bytes: int = 1 << 31  # refuse a STOW-RS request larger than this (HTTP 413)
    status_token_file: str = ""  # bearer token for GET /hub/status (mode 600; "": no such page)
    site: tuple[HubSite, ...] = ()  # `[[hub.site]]` tables: name = "site-a", token_file = FILE


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
    receiver: Receiver = field(default_factory=Receiver)  # [receiver]
    worklist: Worklist = field(default_factory=Worklist)  # [worklist]
    audit: Audit = field(default_factory=Audit)  # [audit]
    privacy: Privacy = field(default_factory=Privacy)  # [privacy]
    hub: Hub = field(default_factory=Hub)  # [hub]

    @property
    def hub_store_dir(self) -> Path:
        return Path(self.hub.store_dir) if self.hub.store_dir else self.state_dir / "hub"

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


CREDENTIAL = "credential:"


def _expand_credentials(value: Any, source: str, key: str = "") -> Any:
    """`*_file = "credential:NAME"` is systemd's LoadCredential=NAME:...: the file
    $CREDENTIALS_DIRECTORY/NAME, which only the service can read and no unit file shows."""
    if isinstance(value, dict):
        return {k: _expand_credentials(v, source, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_credentials(v, source, key) for v in value]
    if isinstance(value, str) and key.endswith("_file") and value.startswith(CREDENTIAL):
        folder = os.environ.get("CREDENTIALS_DIRECTORY", "")
        name = value[len(CREDENTIAL) :]
        if not folder:
            raise ConfigError(
                f"{source}: {key} = {value!r} needs systemd's LoadCredential= "
                "(CREDENTIALS_DIRECTORY is not set: not running under systemd?)"
            )
        if not name or "/" in name or name in (".", ".."):
            raise ConfigError(f"{source}: {key} = {value!r}: not a credential name")
        return str(Path(folder) / name)
    return value


def parse(data: dict[str, Any], source: str = "config") -> Config:
    data = _expand_credentials(data, source)
    known = {
        "storage",
        "forward",
        "destination",
        "analysis",
        "ingest",
        "pipeline",
        "web",
        "receiver",
        "worklist",
        "audit",
        "privacy",
        "hub",
    }
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
            tls_pin_file=_typed(where, table, "tls_pin_file", str, ""),
            auth=_typed(where, table, "auth", str, ""),
            username=_typed(where, table, "username", str, ""),
            password_file=_typed(where, table, "password_file", str, ""),
            credentials_file=_typed(where, table, "credentials_file", str, ""),
            aws_profile=_typed(where, table, "aws_profile", str, "default"),
            region=_typed(where, table, "region", str, ""),
            aws_service=_typed(where, table, "aws_service", str, "medical-imaging"),
            max_bytes_per_s=_typed(where, table, "max_bytes_per_s", int, 0),
            max_instance_bytes=_typed(where, table, "max_instance_bytes", int, 0),
            adaptive=_typed(where, table, "adaptive", bool, True),
            send_windows=_windows(f"{where} ({name})", table),
            **_deidentify(where, name, table),
        )
        dest = _auth(f"{where} ({name})", dest)
        if dest.max_bytes_per_s < 0:
            raise ConfigError(f"{where} ({name}): max_bytes_per_s must be 0 (unlimited) or more")
        if dest.max_instance_bytes != 0 and dest.max_instance_bytes < 1 << 20:
            raise ConfigError(
                f"{where} ({name}): max_instance_bytes must be 0 (off) or at least 1 MiB"
            )
        if kind == "stowrs" and dest.max_instance_bytes > dest.max_request_bytes - 4096:
            raise ConfigError(
                f"{where} ({name}): max_instance_bytes {dest.max_instance_bytes} must leave room "
                f"for the multipart headers in a request: at most max_request_bytes - 4096 "
                f"({dest.max_request_bytes - 4096})"
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
        receiver=_receiver(data.get("receiver", {}), f"{source}: [receiver]"),
        worklist=_worklist(data.get("worklist", {}), f"{source}: [worklist]"),
        audit=_audit(data.get("audit", {}), f"{source}: [audit]"),
        privacy=_privacy(data.get("privacy", {}), f"{source}: [privacy]", dests),
        hub=_hub(data.get("hub", {}), f"{source}: [hub]", dests),
        state_dir=Path(_typed(storage_where, storage, "state_dir", str, "/var/lib/edge")),
        batch_size=_typed(f"{source}: [forward]", forward, "batch_size", int, 20),
        retry_base_s=_typed(f"{source}: [forward]", forward, "retry_base_s", float, 5.0),
        retry_ceiling_s=_typed(f"{source}: [forward]", forward, "retry_ceiling_s", float, 3600.0),
        destinations=tuple(dests),
    )


def _windows(where: str, table: dict[str, Any]) -> tuple[str, ...]:
    value = table.get("send_windows", [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f'{where}: send_windows must be a list of "HH:MM-HH:MM" texts, found {value!r}'
        )
    for text in value:
        try:
            parse_window(text)
        except WindowError as exc:
            raise ConfigError(f"{where}: send_windows: {exc}") from exc
    return tuple(value)


def _auth(where: str, dest: Destination) -> Destination:
    """The auth profile checked against the settings it needs ("" is inferred)."""
    auth = dest.auth
    if dest.kind != "stowrs":
        if auth or dest.username or dest.password_file or dest.credentials_file:
            raise ConfigError(f"{where}: auth settings apply to stowrs destinations only")
        return dest
    if not auth:
        auth = "bearer" if dest.token_file else "basic" if dest.username else ""
    if auth and auth not in AUTHS:
        raise ConfigError(f"{where}: auth {auth!r}; expected one of {AUTHS}")
    needs: dict[str, tuple[str, ...]] = {
        "bearer": ("token_file",),
        "basic": ("username", "password_file"),
        "google": ("credentials_file",),
        "aws-sigv4": ("credentials_file", "region"),
    }
    for key in needs.get(auth, ()):
        if not getattr(dest, key):
            raise ConfigError(f"{where}: auth {auth!r} needs {key}")
    used = {"token_file", "username", "password_file", "credentials_file"}
    stray = sorted(k for k in used - set(needs.get(auth, ())) if getattr(dest, k))
    if stray:
        raise ConfigError(f"{where}: {', '.join(stray)} not used by auth {auth or 'none'!r}")
    return replace(dest, auth=auth)


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
    if values["discover_s"] < 0:
        raise ConfigError(f"{where}: discover_s must be 0 (off) or more seconds")
    host, _, port = values["listen"].rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: listen must be ADDRESS:PORT, found {values['listen']!r}")
    if bool(values["tls_cert_file"]) != bool(values["tls_key_file"]):
        raise ConfigError(f"{where}: tls_cert_file and tls_key_file go together")
    if not 0 < values["session_hours"] <= 24 * 30:
        raise ConfigError(f"{where}: session_hours must be above 0 and at most 720 (30 days)")
    return Web(**values)


def _receiver(table: dict[str, Any], where: str) -> Receiver:
    values = _section(Receiver, table, where)
    if not 0 <= values["port"] < 65536:
        raise ConfigError(f"{where}: port {values['port']} is not 0 (off) or 1..65535")
    for title in (values["ae_title"], *values["allowed_aets"]):
        if not 0 < len(title) <= 16:
            raise ConfigError(f"{where}: AE title {title!r} must be 1..16 characters")
    return Receiver(**values)


WORKLIST_KEYS = ("AccessionNumber", "PatientID", "RequestedProcedureID", "StudyInstanceUID")


def _worklist(table: dict[str, Any], where: str) -> Worklist:
    values = _section(Worklist, table, where)
    if values["match"] not in WORKLIST_KEYS:
        raise ConfigError(f"{where}: match {values['match']!r}; expected one of {WORKLIST_KEYS}")
    if values["host"] and not 0 < values["port"] < 65536:
        raise ConfigError(f"{where}: port {values['port']} is not 1..65535")
    return Worklist(**values)


def _audit(table: dict[str, Any], where: str) -> Audit:
    values = _section(Audit, table, where)
    if values["syslog"]:
        host, _, port = values["syslog"].rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{where}: syslog must be HOST:PORT, found {values['syslog']!r}")
    if bool(values["tls_cert_file"]) != bool(values["tls_key_file"]):
        raise ConfigError(f"{where}: tls_cert_file and tls_key_file go together")
    return Audit(**values)


def _analysis(table: dict[str, Any], where: str) -> Analysis:
    values = _section(Analysis, table, where)
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


def _hub(table: dict[str, Any], where: str, dests: list[Destination]) -> Hub:
    """[hub] and its [[hub.site]] tables; every token file is read once here so a missing,
    empty or group-readable token is a mistake at start, not a refused site at night."""
    from edge.secrets import SecretError, read_secret

    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table of settings, found {table!r}")
    sites_table = table.get("site", [])
    values = _section(Hub, {k: v for k, v in table.items() if k != "site"}, where)
    values.pop("site")
    if values["listen"]:
        host, _, port = values["listen"].rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"{where}: listen must be ADDRESS:PORT, found {values['listen']!r}")
    if bool(values["tls_cert_file"]) != bool(values["tls_key_file"]):
        raise ConfigError(f"{where}: tls_cert_file and tls_key_file go together")
    if values["max_request_bytes"] < 1 << 20:
        raise ConfigError(f"{where}: max_request_bytes must be at least 1 MiB (1048576)")
    if values["forward"] and not dests:
        raise ConfigError(f"{where}: forward = true needs at least one [[destination]]")
    deidentifying = [d.name for d in dests if d.deidentify]
    if values["forward"] and deidentifying:
        # The hub forwards what sites sent as it is: identified data must not reach a
        # destination that was set up to receive de-identified copies only.
        raise ConfigError(
            f"{where}: forward = true sends instances as received, but {deidentifying} "
            "de-identify; a hub cannot forward to them (remove deidentify, or forward = false)"
        )
    if not isinstance(sites_table, list):
        raise ConfigError(f'{where}: sites go in [[hub.site]] tables (name = "...", token_file)')
    sites: list[HubSite] = []
    for i, site in enumerate(sites_table):
        here = f"{where} [[hub.site]] #{i + 1}"
        if not isinstance(site, dict):
            raise ConfigError(f"{here}: must be a table, found {site!r}")
        extra = sorted(set(site) - set(HubSite.__dataclass_fields__))
        if extra:
            raise ConfigError(f"{here}: unknown setting(s) {extra}; expected name, token_file")
        name = _typed(here, site, "name", str, "")
        token_file = _typed(here, site, "token_file", str, "")
        # The name becomes a folder: letters, digits, '-', '_' and '.' only, not starting with
        # '.' (the hub keeps its unfinished uploads in <store_dir>/.incoming).
        if not name or name[0] == "." or not all(c.isalnum() or c in "._-" for c in name):
            raise ConfigError(
                f"{here}: name {name!r} must be letters, digits, '.', '-' or '_', not starting "
                "with '.' (a folder name)"
            )
        if name in (s.name for s in sites):
            raise ConfigError(f"{here}: the site {name!r} is listed twice")
        if not token_file:
            raise ConfigError(f"{here} ({name}): token_file is required")
        sites.append(HubSite(name=name, token_file=token_file))
    if values["listen"] and not sites:
        raise ConfigError(f"{where}: listen is set but no [[hub.site]] may send")
    tokens: dict[bytes, str] = {}
    named = [(f"{where} [[hub.site]] {s.name}: token_file", s.token_file) for s in sites]
    if values["status_token_file"]:
        named.append((f"{where} status_token_file", values["status_token_file"]))
    for what, path in named:
        try:
            token = read_secret(Path(path), what)
        except SecretError as exc:
            raise ConfigError(str(exc)) from exc
        if len(token) < 16:
            raise ConfigError(f"{what}: {path} holds {len(token)} bytes; at least 16 are needed")
        if token in tokens:
            raise ConfigError(f"{what}: {path} holds the same token as {tokens[token]}")
        tokens[token] = what
    return Hub(**values, site=tuple(sites))
