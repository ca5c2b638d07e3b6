"""A KServe v2 request against one served model: its metadata, inputs checked against its TensorSpecs, and a run.

Each request's batch (dim 0, the same for every input) is split into rows, and every row is one job in the
model's dynamic batcher, so the rows of one request share forwards with everyone else's; the outputs are
stacked back. A text model takes `text` (BYTES [N], tokenized here) or `input_ids` [N, L] with an optional
`attention_mask` (its zeros are padding, dropped per row).
"""

from __future__ import annotations

import torch

from genie.errors import InvalidRequest, NotFound
from genie.workers.contract import TensorSpec

from .catalog import Catalog, Entry, StatelessEntry
from .generation import CHARS_PER_TOKEN_BOUND
from .kserve_codec import BYTES, InferRequest, WireTensor, v2_datatype
from .stateless.service import Tensors

VERSION = "1"  # the one version a served model answers to (the registry version is chosen at start)
TEXT_INPUTS = (TensorSpec("text", "bytes", (-1,)), TensorSpec("input_ids", "int64", (-1, -1)),
               TensorSpec("attention_mask", "int64", (-1, -1)))
_TEXT_DATATYPES = {"input_ids": ("INT64", "INT32"), "attention_mask": ("INT64", "INT32", "BOOL")}


def find_entry(catalog: Catalog, name: str, version: str | None = None) -> Entry:
    """The served model a v2 request names; version: None or "" (any), else it must be VERSION."""
    entry = catalog.entries.get(name)
    if entry is None:
        served = ", ".join(f"'{n}'" for n in catalog.entries)
        raise NotFound(f"model '{name[:80]}' is not served here; this server serves {served}")
    if version and version != VERSION:
        raise NotFound(f"model '{name}' has no version '{version[:20]}'; it serves version '{VERSION}'")
    return entry


def tensor_model(entry: Entry) -> StatelessEntry:
    """The entry, when it takes v2 tensors: an LLM does not."""
    if not isinstance(entry, StatelessEntry):
        raise InvalidRequest(f"model '{entry.name}' is an LLM; LLMs are served by POST /v1/chat/completions and "
                             "/v1/completions (or the gRPC genie.inference.Inference/Generate), not by the v2 "
                             "tensor protocol")
    return entry


def llm_metadata(entry: Entry) -> dict:
    """An LLM is listed like every model; it takes no v2 tensors."""
    return {"name": entry.name, "versions": [VERSION], "platform": "pytorch", "inputs": [], "outputs": []}


def is_text(entry: StatelessEntry) -> bool:
    return entry.tokenizer is not None


def served_inputs(entry: StatelessEntry) -> tuple[TensorSpec, ...]:
    return TEXT_INPUTS if is_text(entry) else entry.inputs


def _spec_json(spec: TensorSpec) -> dict:
    datatype = BYTES if spec.dtype == "bytes" else v2_datatype(spec.dtype)
    return {"name": spec.name, "datatype": datatype, "shape": list(spec.shape)}


def model_metadata(entry: StatelessEntry) -> dict:
    return {"name": entry.name, "versions": [VERSION], "platform": "pytorch",
            "inputs": [_spec_json(s) for s in served_inputs(entry)],
            "outputs": [_spec_json(s) for s in entry.outputs]}


# -- checks -----------------------------------------------------------------------------------------------

def _check_spec(tensor: WireTensor, spec: TensorSpec, model: str, text: bool) -> None:
    want = _spec_json(spec)
    allowed = _TEXT_DATATYPES.get(spec.name, ()) if text else ()
    if tensor.datatype != want["datatype"] and tensor.datatype not in allowed:
        raise InvalidRequest(f"input '{tensor.name}' has datatype {tensor.datatype}; model '{model}' takes "
                             f"{' or '.join((want['datatype'], *allowed[1:])) if allowed else want['datatype']}")
    fits = len(tensor.shape) == len(spec.shape) and all(w in (-1, g) for g, w in zip(tensor.shape, spec.shape))
    if not fits:
        raise InvalidRequest(f"input '{tensor.name}' has shape {list(tensor.shape)}; model '{model}' takes "
                             f"{list(spec.shape)} (-1: any size)")


def _batch(inputs: dict[str, WireTensor], entry: StatelessEntry) -> int:
    sizes = {name: t.shape[0] if t.shape else 1 for name, t in inputs.items()}
    if len(set(sizes.values())) > 1:
        shown = ", ".join(f"'{n}': {s}" for n, s in sizes.items())
        raise InvalidRequest(f"the inputs disagree on the batch size (dim 0): {shown}")
    (batch,) = set(sizes.values())
    limit = entry.service.policy.max_batch_size
    if batch < 1 or batch > limit:
        name = next(iter(inputs))
        raise InvalidRequest(f"input '{name}' has a batch of {batch}; model '{entry.name}' takes 1 to {limit} "
                             "rows per request (max_batch_size)")
    return batch


def check_inputs(request: InferRequest, entry: StatelessEntry) -> dict[str, WireTensor]:
    """The request's inputs by name, each matched to one of the model's (text models: text, or input_ids)."""
    specs = {s.name: s for s in served_inputs(entry)}
    given = {t.name: t for t in request.inputs}
    unknown = next((n for n in given if n not in specs), None)
    if unknown is not None:
        raise InvalidRequest(f"input '{unknown}' is not an input of model '{entry.name}'; it takes "
                             f"{', '.join(repr(n) for n in specs)}")
    for tensor in given.values():
        _check_spec(tensor, specs[tensor.name], entry.name, is_text(entry))
    if is_text(entry):
        _check_text_names(given, entry.name)
    else:
        missing = next((n for n, s in specs.items() if s.required and n not in given), None)
        if missing is not None:
            raise InvalidRequest(f"input '{missing}' is missing; model '{entry.name}' takes "
                                 f"{', '.join(repr(n) for n in specs)}")
    _batch(given, entry)
    return given


def _check_text_names(given: dict[str, WireTensor], model: str) -> None:
    if ("text" in given) == ("input_ids" in given):
        raise InvalidRequest(f"model '{model}' takes either input 'text' (BYTES [N]) or input 'input_ids' "
                             "(INT64 [N, L], with an optional 'attention_mask'), exactly one of them")
    if "attention_mask" in given and given["attention_mask"].shape != given["input_ids"].shape:
        raise InvalidRequest(f"input 'attention_mask' has shape {list(given['attention_mask'].shape)}; it must "
                             f"match input 'input_ids' {list(given['input_ids'].shape)}")


def check_outputs(request: InferRequest, entry: StatelessEntry) -> dict[str, bool]:
    """Which outputs to send, each binary or not; a classification is asked of a [batch, classes] output."""
    names = [s.name for s in entry.outputs]
    if request.outputs is None:
        return {name: request.binary_output for name in names}
    unknown = next((n for n in request.outputs if n not in names), None)
    if unknown is not None:
        raise InvalidRequest(f"output '{unknown}' is not an output of model '{entry.name}'; it gives "
                             f"{', '.join(repr(n) for n in names)}")
    specs = {s.name: s for s in entry.outputs}
    for name, count in request.classes.items():
        shape = specs[name].shape
        if len(shape) != 2 or shape[1] < 0:
            raise InvalidRequest(f"output '{name}' has shape {list(shape)}; parameters.classification needs a "
                                 "[batch, classes] output")
        if count > shape[1]:
            raise InvalidRequest(f"output '{name}'.parameters.classification asks for {count} classes; output "
                                 f"'{name}' has {shape[1]}")
    return dict(request.outputs)


def top_classes(scores: torch.Tensor, count: int) -> tuple[bytes, ...]:
    """Each row's `count` highest scores as Triton writes them, "value:index", best first, row-major."""
    values, indices = torch.topk(scores.float(), count, dim=-1)
    return tuple(f"{v:f}:{i}".encode() for v, i in zip(values.reshape(-1).tolist(), indices.reshape(-1).tolist()))


# -- running ----------------------------------------------------------------------------------------------

async def _text_rows(inputs: dict[str, WireTensor], entry: StatelessEntry) -> list[list[int]]:
    if "text" in inputs:
        try:
            texts = [item.decode("utf-8") for item in inputs["text"].value]
        except UnicodeDecodeError:
            raise InvalidRequest("input 'text' holds an element that is not UTF-8") from None
        long = next((i for i, t in enumerate(texts) if len(t) > entry.max_tokens * CHARS_PER_TOKEN_BOUND), None)
        if long is not None:
            raise InvalidRequest(f"input 'text' row {long} has {len(texts[long])} characters, more than model "
                                 f"'{entry.name}' reads ({entry.max_tokens} tokens); shorten or split it")
        rows = await entry.tokenizer.encode_many_async(texts)
        where = "text"
    else:
        ids = inputs["input_ids"].value.to(torch.int64)
        mask = inputs["attention_mask"].value.bool() if "attention_mask" in inputs else torch.ones_like(ids).bool()
        rows = [row[keep].tolist() for row, keep in zip(ids, mask)]
        bad = next((t for row in rows for t in row if t < 0 or t >= entry.vocab_size), None)
        if bad is not None:
            raise InvalidRequest(f"input 'input_ids' holds token id {bad}, outside the vocabulary of model "
                                 f"'{entry.name}' (0 to {entry.vocab_size - 1})")
        where = "input_ids"
    for i, row in enumerate(rows):
        if not row or len(row) > entry.max_tokens:
            raise InvalidRequest(f"input '{where}' row {i} has {len(row)} tokens; model '{entry.name}' reads 1 to "
                                 f"{entry.max_tokens}")
    return rows


def stack_rows(rows: list[torch.Tensor], spec: TensorSpec, lengths: list[int] | None) -> torch.Tensor:
    """One output of every row, stacked. For text rows (`lengths`: each row's tokens), an output with a token
    axis (dim 1 of its spec varies) is cut to each row's own tokens, whatever forward the row ran in, and
    zero-padded to the request's longest row, as a padded `input_ids` request would be."""
    if lengths is None or len(spec.shape) < 2 or spec.shape[1] != -1:
        return torch.stack(rows)
    longest = max(lengths)
    cut = [row[:n] for row, n in zip(rows, lengths)]
    return torch.stack([torch.nn.functional.pad(r, (0, 0) * (r.dim() - 1) + (0, longest - r.shape[0])) for r in cut])


async def run(entry: StatelessEntry, inputs: dict[str, WireTensor], wanted: dict[str, bool],
              classes: dict[str, int] | None = None) -> list[WireTensor]:
    """The wanted outputs for every row, stacked in row order (dim 0 is the request's batch); an output in
    `classes` comes as BYTES [batch, count], its top classes (see top_classes)."""
    lengths = None
    if is_text(entry):
        rows = await _text_rows(inputs, entry)
        lengths = [len(row) for row in rows]
        results = await entry.service.run_ids(rows)
    else:
        batch = next(iter(inputs.values())).shape[0]
        rows: list[Tensors] = [{n: t.value[i:i + 1] for n, t in inputs.items()} for i in range(batch)]
        results = await entry.service.run_tensors(rows)
    specs = {s.name: s for s in entry.outputs}
    outputs = []
    for name in wanted:
        stacked = stack_rows([r[name] for r in results], specs[name], lengths)
        if classes and name in classes:
            count = classes[name]
            outputs.append(WireTensor(name, BYTES, (stacked.shape[0], count), top_classes(stacked, count)))
            continue
        datatype = v2_datatype(str(stacked.dtype).removeprefix("torch."))
        outputs.append(WireTensor(name, datatype, tuple(stacked.shape), stacked))
    return outputs
