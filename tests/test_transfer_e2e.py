"""End to end with real processes on 127.0.0.1: the relay (`ekd exchange serve`) and two
`ekd serve` instances (a thuiszorg and a GGD, each with its own database and organisation
certificate, mutual TLS everywhere) transfer a demo dossier. The received dossier equals the
sent one resource for resource, apart from server-assigned ids and the receiver's Provenance.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.exchange_processes import GGD, RELAY, THUISZORG, network
from tests.test_transfer_flow import _shape


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_dossier_travels_between_two_servers(backend: str, tmp_path: Path) -> None:
    with network(tmp_path, backend) as net:
        for ura in (RELAY, THUISZORG, GGD):
            net.start(ura)
        child = net.load_child(THUISZORG)
        with net.client(THUISZORG) as c:
            sent = c.get(f"{net.base(THUISZORG)}/fhir/Patient/{child}/$everything").json()
        transfer_id = net.transfer(THUISZORG, child, GGD)
        assert net.wait_final(THUISZORG, transfer_id) == "imported", \
            net.servers[RELAY].log_tail()
        received = net.received(GGD)
        assert [r["state"] for r in received] == ["imported"]
        with net.client(GGD) as c:
            got = c.get(f"{net.base(GGD)}/fhir/Patient/{received[0]['patient_id']}"
                        "/$everything").json()
        assert _shape([e["resource"] for e in got["entry"]], drop_provenance=True) == \
            _shape([e["resource"] for e in sent["entry"]], drop_provenance=False)
