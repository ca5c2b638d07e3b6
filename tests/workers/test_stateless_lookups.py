"""A stateless fragment built from a `py:` factory: inputs in the forward's order, and ids outside an embedding
table refused as an InvalidRequest that names the input (and column) and the table, before any lookup."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genie.errors import InvalidRequest
from genie.registry.factory import import_factory
from genie.serving.demo_recommender import TinyRecommender
from genie.workers.contract import FragmentSpec
from genie.workers.stateless import load_stateless

CPU = torch.device("cpu")


def load(ref: str, folder: Path):
    import_factory(ref, folder)  # lookup_models sits next to this file, which pytest puts on sys.path
    return load_stateless(FragmentSpec("f", str(folder), dtype="float32", kind="stateless"), CPU)


def test_eleven_positional_inputs_keep_the_forwards_order(tmp_path: Path) -> None:
    from lookup_models import WIDE, many_args

    fragment = load("lookup_models:many_args", tmp_path)
    assert [s.name for s in fragment.info.inputs] == [f"a{i}" for i in range(WIDE)]
    assert [s.shape for s in fragment.info.inputs] == [(-1, i + 1) for i in range(WIDE)]
    module, _ = many_args()
    args = [torch.randn(3, i + 1) for i in range(WIDE)]
    torch.testing.assert_close(fragment.run({f"a{i}": t for i, t in enumerate(args)})["output"], module(*args))


def test_keyword_inputs_are_listed_in_the_forwards_order_not_sorted(tmp_path: Path) -> None:
    fragment = load("genie.serving.demo_models:tiny_recommender", tmp_path)
    assert [s.name for s in fragment.info.inputs] == ["sparse_ids", "dense"]


@pytest.mark.parametrize("column, bad", [(1, TinyRecommender.TABLE_ROWS[1]), (3, -1), (0, 2**40)])
def test_an_id_outside_a_table_names_the_input_column_and_table(tmp_path: Path, column: int, bad: int) -> None:
    fragment = load("genie.serving.demo_models:tiny_recommender", tmp_path)
    ids = torch.zeros(3, len(TinyRecommender.TABLE_ROWS), dtype=torch.int64)
    ids[2, column] = bad
    rows = TinyRecommender.TABLE_ROWS[column]
    with pytest.raises(InvalidRequest) as info:
        fragment.run({"sparse_ids": ids, "dense": torch.zeros(3, TinyRecommender.DENSE)})
    assert str(info.value) == (f"input 'sparse_ids' column {column} holds id {bad}, outside embedding table "
                               f"'tables.{column}' ({rows} rows: ids 0 to {rows - 1})")
    ok = fragment.run({"sparse_ids": ids.clamp(0, min(TinyRecommender.TABLE_ROWS) - 1),
                       "dense": torch.zeros(3, TinyRecommender.DENSE)})
    assert ok["scores"].shape == (3, 1)


def test_a_pooled_table_fed_the_whole_input_names_it(tmp_path: Path) -> None:
    fragment = load("stateless_models:scorer", tmp_path)
    with pytest.raises(InvalidRequest, match=r"^input 'item_ids' holds id 50, outside embedding table 'items' "):
        fragment.run({"item_ids": torch.full((2, 5), 50), "dense": torch.zeros(2, 4)})


def test_ids_the_model_computes_name_the_inputs_they_came_from(tmp_path: Path) -> None:
    fragment = load("lookup_models:shifted_ids", tmp_path)
    with pytest.raises(InvalidRequest, match=r"^an id computed from input 'ids' holds id 10, outside .*'table'"):
        fragment.run({"ids": torch.tensor([[9]])})
    assert fragment.run({"ids": torch.tensor([[8]])})["output"].shape == (1, 1)
