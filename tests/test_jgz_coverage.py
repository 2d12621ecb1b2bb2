"""`ekd bds coverage`: BDS elements mapped by the JGZ profiles vs what a transfer requires."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ekd.cli.main import app
from ekd.jgz.coverage import coverage, read_tree

SHARED = Path(__file__).resolve().parents[2] / "shared"
TREE = SHARED / "jgz/transfer-dataset-tree-with-cardinalities.txt"

SAMPLE = """\
r002_dossierinformatie [1..1] 2.1.2
  dossiernummer [1..1] 2.3.695
  opmerking [0..1] 2.3.9999
r018_activiteit [0..unbounded] 2.1.18
  activiteit_id [1..1] 2.3.1377
"""


def test_mandatory_means_the_whole_chain(tmp_path: Path) -> None:
    path = tmp_path / "tree.txt"
    path.write_text(SAMPLE)
    elements = {e.number: e for e in read_tree(path)}
    assert elements["695"].mandatory and elements["695"].required_in_group
    assert not elements["9999"].mandatory
    # an activity id is required in every activity, but activities are optional
    assert not elements["1377"].mandatory and elements["1377"].required_in_group


def test_mapped_elements_come_from_bds_mappings(tmp_path: Path) -> None:
    path = tmp_path / "tree.txt"
    path.write_text(SAMPLE)
    profile = {
        "resourceType": "StructureDefinition", "id": "jgz-X",
        "url": "https://fhir.ekd.nl/StructureDefinition/jgz-X",
        "mapping": [{"identity": "bds"}],
        "differential": {"element": [
            {"id": "EpisodeOfCare.identifier", "mapping": [{"identity": "bds", "map": "695"}]},
            {"id": "EpisodeOfCare.status", "mapping": [{"identity": "rim", "map": "1377"}]},
        ]},
    }
    result = coverage([profile], path)
    assert result.mapped == {"695": ["jgz-X: EpisodeOfCare.identifier"]}
    assert result.mandatory_unmapped == []
    assert [e.number for e in result.required_in_group_unmapped] == ["1377"]


def test_every_mandatory_transfer_element_is_mapped() -> None:
    if not TREE.is_file():
        pytest.skip(f"the transfer tree is absent: {TREE}")
    result = CliRunner().invoke(app, ["bds", "coverage", "--tree", str(TREE)])
    assert result.exit_code == 0, result.output
    assert "unmapped: 0" in result.output
