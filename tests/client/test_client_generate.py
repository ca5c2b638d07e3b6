"""genie.remote of a decoder LLM against the worker's program host in-process (fake_transport.py): HF generate
gives local eager's tokens, its KV cache stays on the host as handles (the host's own counters show no KV on
the wire), and what cannot work with a resident cache says so."""

from __future__ import annotations

import gc as pygc

import pytest
import torch

import genie
import genie.client as gc
from client_models import tiny_gpt2
from genie.errors import InvalidRequest

pytestmark = pytest.mark.slow  # a decode graph lowers one program per sequence length
NEW_TOKENS = 6


@pytest.fixture
def session(host_session):
    return host_session


def prompt() -> torch.Tensor:
    return torch.randint(0, 128, (1, 24), generator=torch.Generator().manual_seed(1))


def generate(model, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0, **kwargs)


def traffic(session) -> int:
    """Serialized bytes of every program RPC the host answered, by its own counters."""
    return sum(c.bytes_in + c.bytes_out for c in session.stats().programs)


def kv_bytes(model, positions: int) -> int:
    c = model.config
    return 2 * c.n_layer * positions * c.n_embd * 4  # keys and values, float32


def test_generate_keeps_the_kv_cache_on_the_worker_and_gives_eager_tokens(session) -> None:
    model = tiny_gpt2()
    fast = genie.remote(model, session=session)
    ids = prompt()
    want = generate(model, ids)
    torch.testing.assert_close(generate(fast, ids), want, rtol=0, atol=0)
    report = gc.report()
    assert report["kept_outputs"] == 4 * (NEW_TOKENS) and report["local_calls"] == 0  # 2 layers x (K, V) per step

    # Dynamo tries its newest (dynamic) decode graph first on the next generate, which lowers it once more
    torch.testing.assert_close(generate(fast, ids), want, rtol=0, atol=0)
    before, rpcs = traffic(session), session.transport.rpcs
    torch.testing.assert_close(generate(fast, ids), want, rtol=0, atol=0)  # programs cached: runs only
    steps = session.transport.rpcs - rpcs
    assert steps == NEW_TOKENS
    per_step = (traffic(session) - before) / steps
    # a step moves token ids, positions, the last position's logits (128 floats), and names: no KV, which
    # would be 12 KiB in and more out per step at this prompt length
    print(f"bytes per generate step: {per_step:.0f}; KV of the prompt: {kv_bytes(model, ids.shape[1])}")
    assert per_step < 2000 < kv_bytes(model, ids.shape[1])
    assert session.stats().resident_tensors > 0

    pygc.collect()  # generate's cache dropped: its placeholders are released on the host
    session.release()
    assert session.stats().resident_tensors == 0


def test_without_keep_kv_the_cache_travels_and_the_tokens_are_the_same(session) -> None:
    model = tiny_gpt2()
    fast = genie.remote(model, session=session, keep_kv=False)
    ids = prompt()
    torch.testing.assert_close(generate(fast, ids), generate(model, ids), rtol=0, atol=0)
    assert gc.report()["kept_outputs"] == 0
    steps = [c for c in session.stats().programs if c.runs and c.last_run_bytes_in > kv_bytes(model, 24)]
    assert len(steps) == NEW_TOKENS - 1  # every decode step sent the whole cache...
    assert all(c.last_run_bytes_out > kv_bytes(model, 25) for c in steps)  # ...and got it back, grown


def test_beam_search_and_changed_placeholders_are_refused_with_a_reason(session) -> None:
    model = tiny_gpt2()
    fast = genie.remote(model, session=session)
    with pytest.raises(InvalidRequest, match="keep_kv=False"):
        generate(fast, prompt(), num_beams=2)
    with torch.no_grad():
        out = fast(prompt())
        key = out.past_key_values.layers[0].keys
        assert session.is_placeholder(key) and torch.isnan(key).all()
        key.add_(1.0)
        with pytest.raises(InvalidRequest, match="changed in place"):
            fast(prompt()[:, :1], past_key_values=out.past_key_values)
