"""Built-in patterns on SmolLM2 and ViT, and external plugins through GENIE_PATTERN_PLUGINS and entry points."""

from __future__ import annotations

import textwrap

import networkx as nx
import pytest
from semantic_builders import tiny_llama

from genie.semantic import analyze
from genie.semantic.patterns import ENV_VAR, PatternMatch, PatternPlugin, PatternRegistry
from genie.semantic.patterns.registry import BUILTINS
from genie.semantic.walk import is_linear, nodes_of


class CountWeightMatmuls(PatternPlugin):
    """A plugin defined in a test module: every matmul against a weight."""

    name = "test_weight_matmuls"

    def match(self, graph: nx.DiGraph) -> PatternMatch | None:
        found = [(n,) for n in nodes_of(graph, "matmul") if is_linear(graph, n)]
        return self.result(found, 1.0, graph, evidence=[f"{len(found)} weight matmuls"])

    def hints(self) -> list[str]:
        return ["test hint"]


class Broken(PatternPlugin):
    name = "test_broken"

    def match(self, graph: nx.DiGraph) -> PatternMatch | None:
        raise RuntimeError("plugin bug")

    def hints(self) -> list[str]:
        return []


def test_smollm2_patterns(smollm2_profile):
    counts = {p.name: p.count for p in smollm2_profile.patterns}
    assert counts["attention"] == 30
    assert counts["gated_mlp"] == 30
    assert counts["rms_norm"] == 61  # two per layer and the final norm
    assert counts["parallel_qkv"] == 30
    assert counts["residual"] == 60
    assert counts["kv_cache"] == 30
    assert counts["embedding"] == 1
    assert "mlp" not in counts and "layer_norm" not in counts and "conv_activation" not in counts
    attention = smollm2_profile.pattern("attention")
    assert attention.modules[0] == "model.layers.0.self_attn" and len(attention.modules) == 30
    assert all(p.hints and 0 < p.confidence <= 1 and p.time_ms >= 0 for p in smollm2_profile.patterns)


def test_vit_patterns(vit_graph):
    run = PatternRegistry.default().run(vit_graph)
    counts = {k: m.count for k, m in run.matches.items()}
    assert counts["attention"] == 12 and counts["parallel_qkv"] == 12 and counts["mlp"] == 12
    assert counts["layer_norm"] == 25 and counts["residual"] == 24
    assert "kv_cache" not in counts  # bidirectional attention caches nothing
    assert not any(i["causal"] for i in run.matches["attention"].info)


def test_timing_report_lists_every_plugin(smollm2_graph):
    run = PatternRegistry.default().run(smollm2_graph)
    report = run.timing_report()
    assert set(run.timings_ms) == {p.name for p in (cls() for cls in BUILTINS)}
    for name in run.timings_ms:
        assert name in report
    assert report.splitlines()[-1].startswith("total")


def test_plugin_named_in_env_var_shows_up_in_profile(monkeypatch):
    monkeypatch.setenv(ENV_VAR, f"{__name__}:CountWeightMatmuls")
    model, inputs = tiny_llama()
    profile = analyze(model, inputs)
    found = profile.pattern("test_weight_matmuls")
    assert found is not None
    assert found.count == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer and the LM head
    assert found.hints == ["test hint"]
    assert f"{found.count} weight matmuls" in profile.explanation


def test_plugin_from_entry_point(tmp_path, monkeypatch):
    (tmp_path / "genie_test_plugin_mod.py").write_text(textwrap.dedent('''
        from genie.semantic.patterns import PatternPlugin

        class Softmaxes(PatternPlugin):
            name = "test_entry_point"

            def match(self, graph):
                found = [(n,) for n in graph.nodes if graph.nodes[n]["kind"] == "sdpa"]
                return self.result(found, 0.5, graph)

            def hints(self):
                return []
    '''))
    dist = tmp_path / "genie_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: genie-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[genie.patterns]\nsdpa = genie_test_plugin_mod:Softmaxes\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model, inputs = tiny_llama()
    profile = analyze(model, inputs)
    assert profile.pattern("test_entry_point").count == 2


def test_broken_plugin_is_reported_and_the_rest_still_runs(monkeypatch):
    monkeypatch.setenv(ENV_VAR, f"{__name__}:Broken")
    model, inputs = tiny_llama()
    profile = analyze(model, inputs)
    assert profile.workload_type == "llm"
    assert any("test_broken failed" in line and "plugin bug" in line for line in profile.explanation)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon_here", "look like 'package.module:ClassName'"),
        ("genie_no_such_module_xyz:Thing", "cannot import module"),
        (f"{__name__}:NoSuchClass", "has no attribute 'NoSuchClass'"),
        (f"{__name__}:textwrap", "is not a PatternPlugin"),
    ],
)
def test_bad_plugin_specs_say_what_to_fix(monkeypatch, spec, message):
    monkeypatch.setenv(ENV_VAR, spec)
    with pytest.raises(ValueError, match=message):
        PatternRegistry.default()


def test_env_var_is_read_when_the_registry_is_built_not_at_import(monkeypatch):
    assert "test_weight_matmuls" not in PatternRegistry.default().names
    monkeypatch.setenv(ENV_VAR, f" {__name__}:CountWeightMatmuls , ")
    assert "test_weight_matmuls" in PatternRegistry.default().names
