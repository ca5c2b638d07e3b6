"""model_type (as config.json spells it) -> the family that loads and runs it."""

from __future__ import annotations

from genie.errors import InvalidRequest
from genie.workers.engine.gpt2 import GPT2Family
from genie.workers.engine.llama import LlamaFamily
from genie.workers.engine.model import Family

FAMILIES: dict[str, Family] = {
    "llama": LlamaFamily(),  # also SmolLM, which ships as model_type "llama"
    "mistral": LlamaFamily(),
    "qwen2": LlamaFamily(qkv_bias=True),
    "gpt2": GPT2Family(),
}


def family_for(model_type: str | None) -> Family:
    family = FAMILIES.get(model_type or "")
    if family is None:
        raise InvalidRequest(
            f"model_type {model_type!r} is not supported by the LLM engine; supported: {', '.join(sorted(FAMILIES))}"
        )
    return family
