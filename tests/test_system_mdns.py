"""mDNS announce and browse over real multicast sockets, confined to the loopback interface
(127.0.0.1) so tests never talk to the lab network. The announcer runs in a child process,
so the records cross the kernel's multicast loopback, not a shared in-process cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge.system import mdns
from edge.system.mdns import Announcement, MdnsError

LOOPBACK = ["127.0.0.1"]
ROOT = Path(__file__).resolve().parents[1]


def test_announcement_fields_are_checked() -> None:
    with pytest.raises(MdnsError, match="role 'server'"):
        Announcement("x", "1", role="server")
    with pytest.raises(MdnsError, match="without its AE title"):
        Announcement("x", "1", dicom_port=11112)
    with pytest.raises(MdnsError, match="1 to 63 bytes"):
        Announcement("x" * 64, "1")
    with pytest.raises(MdnsError, match="no address"):
        mdns.service_infos(Announcement("x", "1"), [])


def test_announceable_port_of_the_web_listen_setting() -> None:
    assert mdns.announceable_port("127.0.0.1:8080") is None  # the shipped default
    assert mdns.announceable_port("[::1]:8080") is None
    assert mdns.announceable_port("localhost:8080") is None
    assert mdns.announceable_port("0.0.0.0:8080") == 8080
    assert mdns.announceable_port("[::]:8443") == 8443
    assert mdns.announceable_port("192.0.2.7:80") == 80
    with pytest.raises(MdnsError, match="ADDRESS:PORT"):
        mdns.announceable_port("8080")


def test_records_of_an_appliance_with_a_receiver() -> None:
    a = Announcement(
        "Edge lab",
        "0.1.0",
        web_port=8080,
        dicom_aet="EDGE",
        dicom_port=11112,
        dicom_tls=True,
        host="lab",
    )
    infos = mdns.service_infos(a, ["192.0.2.7"])
    assert [(i.type, i.port) for i in infos] == [
        (mdns.EDGE_TYPE, 8080),
        (mdns.HTTP_TYPE, 8080),
        (mdns.DICOM_TLS_TYPE, 11112),
    ]
    assert all(i.server == "lab.local." for i in infos)
    assert infos[0].properties == {
        b"txtvers": b"1",
        b"version": b"0.1.0",
        b"role": b"appliance",
        b"path": b"/",
        b"aet": b"EDGE",
        b"dicom_port": b"11112",
    }
    assert infos[2].properties == {b"txtvers": b"1", b"AET": b"EDGE"}


@pytest.mark.integration
def test_announce_in_child_then_browse_then_goodbye() -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
            import json, sys
            from edge.system import mdns
            a = mdns.Announcement("Edge test-%d" % __import__("os").getpid(), "9.9.9",
                                  web_port=18080, web_path="/ui/", dicom_aet="EDGE_TEST",
                                  dicom_port=11112, host="edge-test")
            h = mdns.announce(a, interfaces=["127.0.0.1"])
            print(json.dumps(h.names), flush=True)
            sys.stdin.read()  # until the parent closes our stdin
            h.close()
            print("closed", flush=True)
            """
            ),
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        names = json.loads(child.stdout.readline())
        # Unique per run: another test run on this host may be announcing on loopback too.
        hub_name = f"Edge hub-{os.getpid()}"
        assert len(names) == 3, names
        hub = mdns.announce(
            Announcement(hub_name, "1.0", role="hub", web_port=18443, host="hub-here"),
            interfaces=LOOPBACK,
        )
        with hub:
            types = (*mdns.BROWSE_TYPES, mdns.HTTP_TYPE)
            peers = mdns.browse(2.0, types=types, interfaces=LOOPBACK)
            by_name = {p.name: p for p in peers}
            mine = [by_name[n] for n in names if n in by_name]
            assert len(mine) == 3, f"expected the child's 3 records, browse found {list(by_name)}"
            edge, http, dicom = mine
            assert (edge.kind, edge.port, edge.version, edge.aet) == (
                "appliance",
                18080,
                "9.9.9",
                "EDGE_TEST",
            )
            assert edge.host == "edge-test.local." and "127.0.0.1" in edge.addresses
            assert edge.web_url == "http://127.0.0.1:18080/ui/"
            assert edge.get("dicom_port") == "11112"
            assert (http.service_type, http.port, http.get("path")) == (
                mdns.HTTP_TYPE,
                18080,
                "/ui/",
            )
            assert (dicom.kind, dicom.port, dicom.aet) == ("dicom", 11112, "EDGE_TEST")
            hubs = [p for p in peers if p.kind == "hub" and p.name in hub.names]
            assert [p.instance for p in hubs] == [hub_name]
            # Our own records can be left out of the result.
            again = mdns.browse(
                1.5, types=(mdns.EDGE_TYPE,), interfaces=LOOPBACK, exclude=hub.names
            )
            assert [p.kind for p in again if p.name in names] == ["appliance"]
            assert not [p for p in again if p.name in hub.names]
        child.stdin.close()
        assert child.stdout.readline().strip() == "closed"
        assert child.wait(timeout=20) == 0
        after = mdns.browse(1.5, types=(mdns.EDGE_TYPE,), interfaces=LOOPBACK)
        assert not [p for p in after if p.name in names], "goodbye packets not honoured"
    finally:
        child.kill()
