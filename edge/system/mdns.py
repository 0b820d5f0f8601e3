"""mDNS / DNS-SD: announce this appliance on the lab network and discover peers.

Records announced by `announce()`:
- `<instance>._edge-wsi._tcp.local.` (our own type): SRV -> the dashboard/API port; TXT
  txtvers=1, version, role (appliance | hub), path (the web root), and aet + dicom_port when
  a DICOM receiver runs. Hubs and other appliances find each other through it.
- `<instance>._http._tcp.local.`: the dashboard, TXT path=, so browsers/avahi-discover
  list it.
- `<instance>._dicom._tcp.local.` (or `_dicom-tls._tcp` with TLS): the DICOM receiver,
  TXT txtvers=1, AET=, using the service names DICOM PS3.15 Annex H.2 reserves for DNS-SD.

`browse()` looks for `_edge-wsi._tcp`, `_dicom._tcp` and `_dicom-tls._tcp` for a while and
returns what answered as frozen `Peer`s. The zeroconf objects stay inside this module.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import ifaddr
from zeroconf import (
    InterfaceChoice,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

from edge.errors import EdgeError

LOGGER = logging.getLogger(__name__)

EDGE_TYPE = "_edge-wsi._tcp.local."
HTTP_TYPE = "_http._tcp.local."
DICOM_TYPE = "_dicom._tcp.local."
DICOM_TLS_TYPE = "_dicom-tls._tcp.local."
BROWSE_TYPES = (EDGE_TYPE, DICOM_TYPE, DICOM_TLS_TYPE)
ROLES = ("appliance", "hub")

# Where to listen/announce: zeroconf's InterfaceChoice (All, Default) or a list of addresses.
Interfaces = InterfaceChoice | Sequence[str]


class MdnsError(EdgeError):
    """An announcement that cannot be made (bad field, no usable address, socket failure)."""


@dataclass(frozen=True)
class Announcement:
    """What to announce. Ports of 0/None mean that service is not running."""

    instance: str  # DNS-SD instance name, e.g. "Edge WSI scanner-room-2"; <= 63 bytes
    version: str  # software version, shown by peers
    role: str = "appliance"  # appliance | hub
    web_port: int = 8080  # the dashboard/API port (SRV of _edge-wsi and _http)
    web_path: str = "/"
    dicom_aet: str = ""  # our AE title when a DICOM receiver runs
    dicom_port: int = 0  # its port (0: no receiver, no _dicom record)
    dicom_tls: bool = False  # announce _dicom-tls._tcp instead of _dicom._tcp
    host: str = ""  # mDNS host name without ".local." (default: this machine's host name)
    addresses: tuple[str, ...] = ()  # IPs to publish (default: those of the chosen interfaces)

    def __post_init__(self) -> None:
        if not self.instance or len(self.instance.encode()) > 63:
            raise MdnsError(f"mDNS instance {self.instance!r}: expected 1 to 63 bytes")
        if self.role not in ROLES:
            raise MdnsError(f"mDNS role {self.role!r}: expected one of {', '.join(ROLES)}")
        for name in ("web_port", "dicom_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise MdnsError(f"mDNS {name}={port}: expected 0..65535")
        if self.dicom_port and not self.dicom_aet:
            raise MdnsError("mDNS: a DICOM receiver port was given without its AE title")
        if not self.web_path.startswith("/"):
            raise MdnsError(f"mDNS web_path {self.web_path!r}: expected an absolute path")


def edge_txt(a: Announcement) -> dict[str, str]:
    """TXT of the _edge-wsi record (pure; what peers read back as Peer.txt)."""
    txt = {"txtvers": "1", "version": a.version, "role": a.role, "path": a.web_path}
    if a.dicom_port:
        txt |= {"aet": a.dicom_aet, "dicom_port": str(a.dicom_port)}
    return txt


def service_infos(a: Announcement, addresses: Sequence[str]) -> list[ServiceInfo]:
    """The zeroconf records for an announcement (pure apart from building objects)."""
    if not addresses:
        raise MdnsError(f"mDNS {a.instance!r}: no address to announce")
    server = f"{a.host or socket.gethostname().split('.')[0]}.local."
    packed = [ipaddress.ip_address(ip).packed for ip in addresses]

    def info(type_: str, port: int, txt: dict[str, str]) -> ServiceInfo:
        return ServiceInfo(
            type_,
            f"{a.instance}.{type_}",
            port=port,
            properties=txt,
            server=server,
            addresses=packed,
        )

    infos = []
    if a.web_port:
        infos.append(info(EDGE_TYPE, a.web_port, edge_txt(a)))
        infos.append(info(HTTP_TYPE, a.web_port, {"path": a.web_path}))
    if a.dicom_port:
        kind = DICOM_TLS_TYPE if a.dicom_tls else DICOM_TYPE
        infos.append(info(kind, a.dicom_port, {"txtvers": "1", "AET": a.dicom_aet}))
    if not infos:
        raise MdnsError(f"mDNS {a.instance!r}: neither a web port nor a DICOM port to announce")
    return infos


def announceable_port(listen: str) -> int | None:
    """The port to announce for a `[web] listen` ADDRESS:PORT, or None when it is bound to
    loopback only (peers could not reach it, so announcing it would mislead them)."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise MdnsError(f"listen {listen!r}: expected ADDRESS:PORT")
    if host in ("localhost", "") or (host not in ("0.0.0.0", "::") and _is_loopback(host)):
        return None
    return int(port)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume it resolves to a routable address


def interface_addresses(interfaces: Interfaces) -> list[str]:
    """Addresses to publish for the chosen interfaces (loopback only when asked for)."""
    if not isinstance(interfaces, InterfaceChoice):
        return [str(ip) for ip in interfaces]
    out = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, tuple):  # IPv6: (address, flowinfo, scope_id)
                addr = ipaddress.ip_address(ip.ip[0])
            else:
                addr = ipaddress.ip_address(ip.ip)
            if not (addr.is_loopback or addr.is_link_local):
                out.append(str(addr))
    return out


class Announced:
    """Handle of a running announcement; `close()` sends goodbyes and stops the responder."""

    def __init__(self, zc: Zeroconf, infos: list[ServiceInfo]) -> None:
        self._zc = zc
        self.infos = infos
        self._closed = False

    @property
    def names(self) -> tuple[str, ...]:
        """The registered names (zeroconf may have renamed one to dodge a conflict)."""
        return tuple(i.name for i in self.infos)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._zc.unregister_all_services()
        finally:
            self._zc.close()

    def __enter__(self) -> Announced:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _zeroconf(interfaces: Interfaces) -> Zeroconf:
    choice: InterfaceChoice | list[str]
    choice = interfaces if isinstance(interfaces, InterfaceChoice) else list(interfaces)
    ipv4_only = not isinstance(interfaces, InterfaceChoice) and all(
        ipaddress.ip_address(i).version == 4 for i in interfaces
    )
    try:
        return Zeroconf(interfaces=choice, ip_version=IPVersion.V4Only if ipv4_only else None)
    except OSError as exc:
        raise MdnsError(f"mDNS: cannot open multicast sockets on {interfaces}: {exc}") from exc


def announce(a: Announcement, interfaces: Interfaces = InterfaceChoice.All) -> Announced:
    """Start answering for `a` on the network; renames on a name conflict ("... (2)")."""
    addresses = list(a.addresses) or interface_addresses(interfaces)
    infos = service_infos(a, addresses)
    zc = _zeroconf(interfaces)
    try:
        for info in infos:
            zc.register_service(info, allow_name_change=True)
    except Exception:
        zc.close()
        raise
    LOGGER.info("mDNS: announcing %s on %s", ", ".join(i.name for i in infos), addresses)
    return Announced(zc, infos)


@dataclass(frozen=True)
class Peer:
    """Something that answered a browse: another appliance, a hub or a DICOM node."""

    name: str  # full service name, e.g. "Edge WSI lab-2._edge-wsi._tcp.local."
    service_type: str
    kind: str  # appliance | hub (from _edge-wsi) | dicom | dicom-tls
    host: str  # the SRV target, e.g. "lab-2.local."
    port: int
    addresses: tuple[str, ...]
    txt: tuple[tuple[str, str], ...] = field(default=())  # keys lower-cased

    def get(self, key: str, default: str = "") -> str:
        key = key.lower()
        return next((v for k, v in self.txt if k == key), default)

    @property
    def instance(self) -> str:
        return self.name[: -len(self.service_type) - 1]

    @property
    def aet(self) -> str:
        return self.get("aet")

    @property
    def version(self) -> str:
        return self.get("version")

    @property
    def web_url(self) -> str:
        """The dashboard of an appliance/hub ("" for a DICOM node)."""
        if self.service_type != EDGE_TYPE or not self.addresses:
            return ""
        ip = ipaddress.ip_address(self.addresses[0])
        hostpart = f"[{ip}]" if ip.version == 6 else str(ip)
        return f"http://{hostpart}:{self.port}{self.get('path', '/')}"


def peer_from_info(info: ServiceInfo) -> Peer:
    """A Peer from a resolved ServiceInfo (pure)."""
    txt: list[tuple[str, str]] = []
    for k, v in (info.properties or {}).items():
        key = k.decode(errors="replace").lower()
        txt.append((key, v.decode(errors="replace") if v is not None else ""))
    txt.sort()
    type_ = info.type
    if type_ == EDGE_TYPE:
        kind = dict(txt).get("role", "appliance")
    elif type_ == DICOM_TLS_TYPE:
        kind = "dicom-tls"
    else:
        kind = "dicom"
    return Peer(
        name=info.name,
        service_type=type_,
        kind=kind,
        host=info.server or "",
        port=info.port or 0,
        addresses=tuple(info.parsed_addresses()),
        txt=tuple(txt),
    )


def browse(
    timeout_s: float = 3.0,
    types: Iterable[str] = BROWSE_TYPES,
    interfaces: Interfaces = InterfaceChoice.All,
    exclude: Iterable[str] = (),
) -> list[Peer]:
    """Peers that answer within `timeout_s`, sorted by name; `exclude` drops our own names."""
    zc = _zeroconf(interfaces)
    seen: set[tuple[str, str]] = set()
    lock = threading.Lock()

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is not ServiceStateChange.Removed:
            with lock:
                seen.add((service_type, name))

    try:
        browser = ServiceBrowser(zc, list(types), handlers=[on_change])
        deadline = time.monotonic() + timeout_s
        time.sleep(max(0.0, timeout_s))
        browser.cancel()
        skip = set(exclude)
        peers = []
        with lock:
            found = sorted(seen)
        for type_, name in found:
            if name in skip:
                continue
            left_ms = max(500, int((deadline + 1.0 - time.monotonic()) * 1000))
            info = zc.get_service_info(type_, name, timeout=left_ms)
            if info is None:
                LOGGER.info("mDNS: %s did not resolve in time", name)
                continue
            peers.append(peer_from_info(info))
        return sorted(peers, key=lambda p: p.name)
    finally:
        zc.close()
