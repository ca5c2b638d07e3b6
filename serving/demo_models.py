"""Demo models for configs that must work offline: no vision weights ship with genie-serve, so these build
small, seeded, untrained models. Their outputs are deterministic and meaningless as predictions."""

from __future__ import annotations


def tiny_resnet():
    """A small ResNet image classifier (transformers' ResNetForImageClassification, 10 classes) with seeded
    random weights: `pixel_values` [N, 3, 64, 64] float32 -> `logits` [N, 10]."""
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64], depths=[1, 1, 1], layer_type="basic",
                          num_labels=10)
    model = ResNetForImageClassification(config).eval()
    return model, {"pixel_values": torch.randn(1, 3, 64, 64)}


def small_resnet():
    """A ResNet image classifier of about 5 MB (basic blocks, widths 32-64-128-256, one block a stage, 10 classes)
    with seeded random weights: `pixel_values` [N, 3, 64, 64] float32 -> `logits` [N, 10]. Big enough that a
    workers.memory_mib of a few MiB cannot hold it whole, so the planner pipelines it (tests do)."""
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1],
                          layer_type="basic", num_labels=10)
    model = ResNetForImageClassification(config).eval()
    return model, {"pixel_values": torch.randn(1, 3, 64, 64)}


def vit_classifier():
    """A ViT image classifier (transformers' ViTForImageClassification: 8 layers of width 256, 64 x 64 images in
    8 x 8 patches, 10 classes, ~26 MB, ~0.9 GFLOP an image) with seeded random weights: `pixel_values`
    [N, 3, 64, 64] float32 -> `logits` [N, 10]. Its layers are alike, so a pipeline cut between them is even
    (configs/vision-pipeline.yaml)."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=256, num_hidden_layers=8, num_attention_heads=4, intermediate_size=1024,
                       image_size=64, patch_size=8, num_labels=10)
    model = ViTForImageClassification(config).eval()
    return model, {"pixel_values": torch.randn(1, 3, 64, 64)}


def resnet18():
    """A ResNet-18-sized image classifier (basic blocks, depths 2-2-2-2, 1000 classes, ~1.8 GFLOP an image) with
    seeded random weights, at 224 x 224: `pixel_values` [N, 3, 224, 224] float32 -> `logits` [N, 1000]. For
    benchmarks that need a model whose compute, not the serving path, sets the pace."""
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                          layer_type="basic", num_labels=1000)
    model = ResNetForImageClassification(config).eval()
    return model, {"pixel_values": torch.randn(1, 3, 224, 224)}


def tiny_recommender():
    """A small DLRM-style click model (a custom nn.Module) with seeded random weights: `sparse_ids` int64
    [N, 4] (one categorical id per feature, each into its own embedding table) and `dense` float32 [N, 8]
    -> {"scores": [N, 1]} (a click logit). Table sizes: TinyRecommender.TABLE_ROWS."""
    import torch

    from .demo_recommender import TinyRecommender

    torch.manual_seed(0)
    model = TinyRecommender().eval()
    example = {"sparse_ids": torch.zeros(1, len(TinyRecommender.TABLE_ROWS), dtype=torch.int64),
               "dense": torch.randn(1, TinyRecommender.DENSE)}
    return model, example


def big_table_recommender():
    """tiny_recommender with a 40 000-row table for feature 2 (demo_recommender.BigTableRecommender), seeded:
    `sparse_ids` int64 [N, 4] (ids below 100, 50, 40000, 30) and `dense` float32 [N, 8] -> {"scores": [N, 1]}."""
    import torch

    from .demo_recommender import BigTableRecommender

    torch.manual_seed(0)
    model = BigTableRecommender().eval()
    example = {"sparse_ids": torch.zeros(1, len(BigTableRecommender.TABLE_ROWS), dtype=torch.int64),
               "dense": torch.randn(1, BigTableRecommender.DENSE)}
    return model, example


def tiny_clip():
    """A small CLIP (transformers' CLIPModel: a 2-layer ViT on 32 x 32 images in 8 x 8 patches, a 2-layer text
    encoder over 8 tokens of a 1000-id vocabulary, 16-wide projections) with seeded random weights:
    `input_ids` int64 [N, 8], `attention_mask` int64 [N, 8], `pixel_values` float32 [N, 3, 32, 32] ->
    logits_per_image [N, N], logits_per_text [N, N], text_embeds [N, 16], image_embeds [N, 16]. Its
    similarities are deterministic and mean nothing; it exists to show the branch-parallel plan."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    text = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=1000,
                max_position_embeddings=8, bos_token_id=0, pad_token_id=1, eos_token_id=2)
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                  patch_size=8)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    example = {"input_ids": torch.randint(3, 1000, (1, 8)), "attention_mask": torch.ones(1, 8, dtype=torch.int64),
               "pixel_values": torch.randn(1, 3, 32, 32)}
    return model, example
