"""Plain HF folders of stateless architectures served with no code of their own: one genie-serve (CLI subprocess,
one worker) lists ViT, ConvNeXt, BERT (with its tokenizer), DistilBERT (without one), CLIP and a Whisper encoder
under `models:`, each `source` the folder `save_pretrained` wrote. For each, the real `tritonclient.http` sees the
model's own forward-argument and output names in the v2 metadata, and a binary v2 infer equals the module run here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import start_server
from hf_folders import AUDIO_POSITIONS, IMAGE, MEL_BINS, WORDS, load_folder, save_folder

pytestmark = pytest.mark.slow
httpclient = pytest.importorskip("tritonclient.http")

MODELS = ("vit", "convnext", "bert", "distilbert", "clip", "whisper")
SEED = torch.Generator().manual_seed(7)
IMAGES = torch.randn(3, 3, IMAGE, IMAGE, generator=SEED)
FEATURES = torch.randn(2, MEL_BINS, 2 * AUDIO_POSITIONS, generator=SEED)
IDS = torch.randint(5, len(WORDS), (3, 6), generator=SEED)  # no special tokens: any ids of the vocabulary


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {name: save_folder(name, root) for name in MODELS}


@pytest.fixture(scope="module")
def server(folders, tmp_path_factory):
    config = {
        "models": [{"name": f"hf-{name}", "source": str(folder), "register_if_missing": True, "dtype": "float32",
                    "max_queue_delay_ms": 50}  # requests in flight together would meet in one forward
                   for name, folder in folders.items()],
        "workers": {"launch": 1, "threads": 1},
        "serving": {"http_port": 0, "grpc_port": None},
    }
    home = tmp_path_factory.mktemp("home")  # a registry of its own: the folders are new on every run
    server = start_server(config, tmp_path_factory.mktemp("serve"), env={"GENIE_HOME": str(home)})
    yield server
    assert server.stop(grace=30) == 0, server.log_tail()


@pytest.fixture(scope="module")
def client(server):
    return httpclient.InferenceServerClient(url=server.url.removeprefix("http://"), network_timeout=120)


def infer(client, model: str, tensors: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    given = []
    for name, array in tensors.items():
        datatype = "BYTES" if array.dtype == object else "INT64" if array.dtype == np.int64 else "FP32"
        tensor = httpclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=True)
        given.append(tensor)
    wanted = [httpclient.InferRequestedOutput(n, binary_data=True) for n in outputs]
    result = client.infer(f"hf-{model}", given, outputs=wanted)
    return {n: result.as_numpy(n) for n in outputs}


def local(folder, **inputs: torch.Tensor) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = load_folder(folder)(**inputs)
    return {k: v.numpy() for k, v in out.items() if isinstance(v, torch.Tensor)}


def names(specs: list[dict]) -> list[str]:
    return [s["name"] for s in specs]


def check_served(client, folder, model: str, tensors: dict[str, torch.Tensor], inputs: list[str]) -> None:
    """Metadata has exactly `inputs` and the module's tensor outputs; a binary infer of `tensors` equals it."""
    want = local(folder, **tensors)
    meta = client.get_model_metadata(f"hf-{model}")
    assert names(meta["inputs"]) == inputs and sorted(names(meta["outputs"])) == sorted(want), meta
    got = infer(client, model, {k: v.numpy() for k, v in tensors.items()}, list(want))
    for name, array in want.items():
        np.testing.assert_allclose(got[name], array, rtol=0, atol=1e-4, err_msg=f"{model}: {name}")


@pytest.mark.parametrize("model", ["vit", "convnext"])
def test_an_image_classifier_folder_serves_its_logits(client, folders, model: str) -> None:
    check_served(client, folders[model], model, {"pixel_values": IMAGES}, ["pixel_values"])


def test_a_whisper_encoder_folder_takes_mel_features(client, folders) -> None:
    check_served(client, folders["whisper"], "whisper", {"input_features": FEATURES}, ["input_features"])


def test_clip_takes_ids_and_pixels_and_a_request_is_one_forward(client, folders) -> None:
    # logits_per_image is [images, texts] of one forward: the request's rows are never mixed with another's.
    tensors = {"input_ids": IDS[:, :5], "pixel_values": IMAGES, "attention_mask": torch.ones(3, 5, dtype=torch.int64)}
    check_served(client, folders["clip"], "clip", tensors, ["input_ids", "pixel_values", "attention_mask"])


def test_an_optional_input_may_be_left_out(client, folders) -> None:
    """CLIP runs without an attention_mask (the model defaults it): the worker says which inputs it needs."""
    want = local(folders["clip"], input_ids=IDS[:, :5], pixel_values=IMAGES)
    got = infer(client, "clip", {"input_ids": IDS[:, :5].numpy(), "pixel_values": IMAGES.numpy()},
                ["logits_per_image"])
    np.testing.assert_allclose(got["logits_per_image"], want["logits_per_image"], rtol=0, atol=1e-4)


def test_clip_requests_in_flight_together_each_get_their_own_forward(server, folders) -> None:
    many = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"), concurrency=4,
                                            network_timeout=120)
    requests = [(IDS[i:i + 2, :4], IMAGES[i:i + 2]) for i in range(2)] * 2
    handles = []
    for ids, images in requests:
        given = []
        for name, array, datatype in (("input_ids", ids, "INT64"), ("pixel_values", images, "FP32"),
                                      ("attention_mask", torch.ones_like(ids), "INT64")):
            tensor = httpclient.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array.numpy())
            given.append(tensor)
        wanted = [httpclient.InferRequestedOutput("logits_per_image")]
        handles.append(many.async_infer("hf-clip", given, outputs=wanted))
    got = [h.get_result(timeout=120).as_numpy("logits_per_image") for h in handles]
    many.close()
    for (ids, images), logits in zip(requests, got, strict=True):
        want = local(folders["clip"], input_ids=ids, pixel_values=images)["logits_per_image"]
        assert logits.shape == (2, 2)
        np.testing.assert_allclose(logits, want, rtol=0, atol=1e-4)


def test_a_text_encoder_without_a_tokenizer_takes_its_ids_as_tensors(client, folders) -> None:
    mask = torch.ones_like(IDS)
    mask[1, 4:] = 0  # the client pads its own rows
    check_served(client, folders["distilbert"], "distilbert", {"input_ids": IDS, "attention_mask": mask},
                 ["input_ids", "attention_mask"])


def test_a_text_encoder_with_a_tokenizer_takes_text(client, folders) -> None:
    from transformers import AutoTokenizer

    texts = ["Hello world.", "A cat sat on a mat, hello."]
    tok = AutoTokenizer.from_pretrained(folders["bert"])(texts, padding=True, pad_to_multiple_of=8,
                                                         return_tensors="pt")
    want = local(folders["bert"], **tok)
    meta = client.get_model_metadata("hf-bert")
    assert {"input_ids", "attention_mask"} <= set(names(meta["inputs"])), meta
    assert sorted(names(meta["outputs"])) == sorted(want), meta
    got = infer(client, "bert", {"text": np.array([t.encode() for t in texts], dtype=object)}, list(want))
    np.testing.assert_allclose(got["pooler_output"], want["pooler_output"], rtol=0, atol=1e-4)
    lengths = tok["attention_mask"].sum(1).tolist()  # per-token outputs: each row's tokens, zeros after them
    assert got["last_hidden_state"].shape[:2] == (2, max(lengths))
    for row, n in enumerate(lengths):
        np.testing.assert_allclose(got["last_hidden_state"][row, :n], want["last_hidden_state"][row, :n], rtol=0,
                                   atol=1e-4)
        assert not got["last_hidden_state"][row, n:].any()
