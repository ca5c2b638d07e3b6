"""LoadProgram's size check (workers/programs/sizes.py): output shapes learnt once per op signature give the
same verdict as running every node on meta, and ops that write to their arguments are never taken from it."""

from __future__ import annotations

import json

import pytest

from genie.errors import ResourceExhausted
from genie.workers.programs import program_id, sizes
from genie.workers.programs.limits import ProgramLimits
from genie.workers.programs.wire import parse_program


def chain(blocks: int, width: int) -> bytes:
    """x [4, width] through `blocks` of (mm, add, relu), then one repeat that makes [4 * 64, width]."""
    nodes, h = [], "x"
    for i in range(blocks):
        nodes += [{"name": f"m{i}", "target": "aten.mm.default", "args": [{"ref": h}, {"ref": "w"}], "kwargs": {}},
                  {"name": f"a{i}", "target": "aten.add_.Tensor", "args": [{"ref": f"m{i}"}, {"ref": "x"}],
                   "kwargs": {}},
                  {"name": f"r{i}", "target": "aten.relu.default", "args": [{"ref": f"a{i}"}], "kwargs": {}}]
        h = f"r{i}"
    nodes.append({"name": "big", "target": "aten.repeat.default", "args": [{"ref": h}, [64, 1]], "kwargs": {}})
    doc = {"format": "genie.program/1", "inputs": [{"name": "x", "dtype": "float32", "shape": [4, width]}],
           "weights": [{"name": "w", "dtype": "float32", "shape": [width, width]}], "nodes": nodes,
           "outputs": ["big"]}
    return json.dumps(doc).encode()


def check(text: bytes, elements: int) -> None:
    sizes.check_sizes(parse_program(text, program_id(text)), ProgramLimits(max_output_elements=elements))


def test_learnt_signatures_give_the_verdict_of_a_full_meta_run() -> None:
    sizes._learnt.clear()
    text = chain(50, 8)
    with pytest.raises(ResourceExhausted, match=r"node 'big' \(aten.repeat.default\) makes a tensor of 2048"):
        check(text, 2047)
    learnt = len(sizes._learnt)
    assert learnt == 3, "mm, relu and repeat once each; add_ writes to its argument and is never learnt"
    with pytest.raises(ResourceExhausted, match="makes a tensor of 2048 elements; this worker allows at most 2047"):
        check(text, 2047)  # now from what was learnt
    check(text, 2048)
    with pytest.raises(ResourceExhausted, match=r"node 'm0' \(aten.mm.default\) makes a tensor of 36 elements"):
        check(chain(2, 9), 35)  # another width: other signatures, learnt afresh
    assert len(sizes._learnt) == learnt + 1  # mm at the new width refused before relu and repeat were reached


def test_the_table_starts_afresh_when_full(monkeypatch) -> None:
    monkeypatch.setattr(sizes, "MAX_SIGNATURES", 2)
    sizes._learnt.clear()
    check(chain(3, 8), 1 << 20)
    assert len(sizes._learnt) <= 2
    with pytest.raises(ResourceExhausted, match="makes a tensor of 2048"):
        check(chain(3, 8), 2047)


def test_an_op_meta_cannot_run_ends_the_check_and_leaves_it_to_the_run() -> None:
    doc = {"format": "genie.program/1", "inputs": [{"name": "x", "dtype": "float32", "shape": [4, 3]}],
           "weights": [], "outputs": ["n0"],
           "nodes": [{"name": "n0", "target": "aten.mm.default", "args": [{"ref": "x"}, {"ref": "x"}], "kwargs": {}}]}
    text = json.dumps(doc).encode()
    check(text, 1)  # [4, 3] @ [4, 3] is the program's own mistake: RunProgram reports it
