"""One branch of a CLIP-style model (a branch-parallel plan): the vision encoder, the text encoder, or the fusion.

A CLIP-style model has `vision_model` + `visual_projection`, `text_model` + `text_projection` and a
`logit_scale` (transformers' CLIPModel and its relatives). Each part holds only its own weights:
- "image": pixel_values -> {"image_features": [batch, projection]}, the projected pooled vision output;
- "text": input_ids, attention_mask -> {"text_features": [batch, projection]};
- "fusion": both features -> the model's own outputs, computed as CLIPModel.forward computes them (normalise,
  cosine similarity times exp(logit_scale)): logits_per_image, logits_per_text, text_embeds, image_embeds.
Only the two feature vectors per example cross the network.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from genie.errors import InvalidRequest
from genie.workers.stateless.loading import Built, InputSig

IMAGE, TEXT, FUSION = "image", "text", "fusion"
BRANCH_PARTS = (IMAGE, TEXT, FUSION)
_NEEDS = {IMAGE: ("vision_model", "visual_projection"), TEXT: ("text_model", "text_projection"),
          FUSION: ("logit_scale", "visual_projection")}


class ImageBranch(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.vision_model, self.visual_projection = model.vision_model, model.visual_projection

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output  # [batch, vision hidden]
        return {"image_features": self.visual_projection(pooled)}


class TextBranch(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.text_model, self.text_projection = model.text_model, model.text_projection

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return {"text_features": self.text_projection(pooled)}


class Fusion(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.logit_scale = model.logit_scale

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> dict[str, torch.Tensor]:
        image = image_features / _norm(image_features)
        text = text_features / _norm(text_features)
        per_text = torch.matmul(text, image.t()) * self.logit_scale.exp()  # [texts, images]
        return {"logits_per_image": per_text.t(), "logits_per_text": per_text, "text_embeds": text,
                "image_embeds": image}


def _norm(t: torch.Tensor) -> torch.Tensor:
    return torch.pow(torch.sum(torch.pow(t, 2), dim=-1, keepdim=True), 0.5)  # as transformers' _get_vector_norm


def branch_part(built: Built, part: str, fragment_id: str) -> Built:
    """The `part` of a CLIP-style model, with the inputs it reads (all required), called by name."""
    module = built.module
    absent = [name for name in _NEEDS[part] if not hasattr(module, name)]
    if absent:
        raise InvalidRequest(f"fragment {fragment_id!r}: part {part!r} needs a CLIP-style model (it has no "
                             f"{absent[0]!r}); serve it whole (strategy: replicas)")
    by_name = {sig.name: sig for sig in built.inputs}
    if part == IMAGE:
        return _with(built, ImageBranch(module), (by_name["pixel_values"],))
    if part == TEXT:
        ids = by_name["input_ids"]
        mask = by_name.get("attention_mask", InputSig("attention_mask", True, ids.probe_shape, ids.varying))
        return _with(built, TextBranch(module), (ids, mask))
    width = module.visual_projection.out_features
    return _with(built, Fusion(module), (InputSig("image_features", False, (1, width)),
                                         InputSig("text_features", False, (1, width))))


def _with(built: Built, module: nn.Module, sigs: tuple[InputSig, ...]) -> Built:
    return replace(built, module=module.eval(), inputs=sigs, required=frozenset(s.name for s in sigs),
                   positional=False)
