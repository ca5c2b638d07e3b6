"""genie-serve (CLI subprocess, two workers) serving configs/multimodal.yaml's demo CLIP branch-parallel, through
the real `tritonclient.grpc`: the vision encoder on one worker, the text encoder on the other, the fusion beside
the heavier one; every output equals the whole model in-process, and only the feature vectors cross."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import shipped_config
from genie.serving.demo_models import tiny_clip
from served import get_json

pytestmark = pytest.mark.slow
grpcclient = pytest.importorskip("tritonclient.grpc")

MODEL = "clip-demo"
OUTPUTS = ("logits_per_image", "logits_per_text", "text_embeds", "image_embeds")


@pytest.fixture(scope="module")
def server(serve_config, tmp_path_factory):
    config = shipped_config("multimodal.yaml")
    config["registry"] = {"home": str(tmp_path_factory.mktemp("registry"))}
    config["workers"] |= {"device": "cpu"}
    return serve_config(config)


def test_branch_parallel_outputs_equal_the_whole_model_and_only_features_cross(server) -> None:
    client = grpcclient.InferenceServerClient(url=server.grpc_address)
    model, _ = tiny_clip()
    rng = np.random.default_rng(5)
    for n in (1, 3):
        ids = rng.integers(3, 1000, (n, 8)).astype(np.int64)
        mask = np.ones((n, 8), np.int64)
        mask[0, 5:] = 0
        pixels = rng.standard_normal((n, 3, 32, 32)).astype(np.float32)
        given = [grpcclient.InferInput("input_ids", [n, 8], "INT64"),
                 grpcclient.InferInput("attention_mask", [n, 8], "INT64"),
                 grpcclient.InferInput("pixel_values", [n, 3, 32, 32], "FP32")]
        for tensor, array in zip(given, (ids, mask, pixels), strict=True):
            tensor.set_data_from_numpy(array)
        got = client.infer(MODEL, given)
        with torch.no_grad():
            whole = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                          pixel_values=torch.from_numpy(pixels))
        for name in OUTPUTS:
            np.testing.assert_allclose(got.as_numpy(name), whole[name].numpy(), rtol=0, atol=1e-5, err_msg=name)
    (report,) = get_json(f"{server.url}/v1/genie/plans")[1]["data"]
    assert report["strategy"] == "branch_parallel"
    workers = {f["role"]: f["worker"] for f in report["fragments"]}
    assert workers["branch:image"] != workers["branch:text"] and workers["fusion"] in workers.values()
    reads = {f["role"]: f["predicted"]["input_bytes_per_request"] for f in report["fragments"]}
    assert reads == {"branch:image": 3 * 32 * 32 * 4, "branch:text": 2 * 8 * 8, "fusion": 2 * 16 * 4}
    for link in report["links"]:  # each encoder hands on one 16-wide fp32 vector per example
        assert link["predicted_bytes_per_request"] == link["measured_payload_bytes_per_request"] == 16 * 4
