"""Regional compilation of the training passes (training/compiled.py, trainer.compile): in float32
the compiled layers give the eager loss and LoRA gradients to rounding, also after a shape
change (the graphs have dynamic shapes); SFT's call and the recompute's share their graphs, and more graphs
than dynamo's recompile limit still compile; no_grad calls never enter the compiled graph; uncompile restores
the eager call; a model without decoder-layer classes fails with a message naming the setting;
and a polychromic run with trainer.compile trains with its layers compiled, SDPA's cuDNN
backend off inside it (trainer.cudnn_attention) and restored after."""

from __future__ import annotations

import copy

import pytest
import torch

from polychromic.training import fast_lora
from polychromic.training.compiled import compile_layers, compiled, decoder_layers, uncompile
from test_fast_lora import rel, run, tiny
from test_train import cfg_of, settings

from polychromic.rundir import read_state
from polychromic.training.loop import train


def test_compiled_layers_match_eager_and_leave_no_grad_calls_eager():
    eager = tiny("qwen3")
    fast_lora.install(eager)
    comp = copy.deepcopy(eager)
    assert compile_layers(comp) == 2 and compiled(comp) == 2 and compiled(eager) == 0
    assert [type(m).__name__ for m in decoder_layers(comp)] == ["Qwen3DecoderLayer"] * 2
    from torch._dynamo.utils import counters

    def recompute(ids):  # the policy-gradient pass's call: into the base model, pack's (1, L) position ids
        pos = torch.arange(ids.shape[1])[None]
        hidden = comp.get_base_model().model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=pos,
                                             use_cache=False).last_hidden_state
        hidden.sum().backward()

    g = torch.Generator().manual_seed(3)
    graphs = counters["stats"]["unique_graphs"]
    for shape in ((3, 13), (2, 21), (4, 9)):
        ids = torch.randint(0, 96, shape, generator=g)
        z_e, g_e = run(eager, ids)
        z_c, g_c = run(comp, ids)
        assert rel(z_c, z_e) < 1e-5
        assert g_e.keys() == g_c.keys() and len(g_e) == 28
        for name in g_e:
            assert rel(g_c[name], g_e[name]) < 1e-4, name
        recompute(ids)
        # one graph for every shape (dynamic), for both layers (the first one's input enters as a
        # leaf that needs grad) and for both calls: SFT's through peft's wrapper (which passes
        # output_attentions=None, ...) and the recompute's into the base model
        assert counters["stats"]["unique_graphs"] - graphs == 1, shape

    # Dynamo's default limit is 8 graphs per function, then it runs eager: under a limit of 1,
    # static graphs for two shapes still both compile (compiled.RECOMPILE_LIMIT)
    static = copy.deepcopy(eager)
    compile_layers(static, dynamic=False)
    graphs = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(recompile_limit=1):
        for shape in ((2, 5), (2, 6)):
            run(static, torch.randint(0, 96, shape, generator=g))
        assert torch._dynamo.config.recompile_limit == 1  # raised only while a compiled layer runs
    assert counters["stats"]["unique_graphs"] - graphs == 2

    frames = dict(counters["frames"])
    with torch.no_grad():  # a new shape under no_grad: eager, no trace, no recompile
        ids = torch.randint(0, 96, (1, 7), generator=g)
        out = comp(input_ids=ids, use_cache=True).logits
        ref = eager(input_ids=ids, use_cache=True).logits
    assert dict(counters["frames"]) == frames
    assert rel(out, ref) < 1e-6

    assert uncompile(comp) == 2 and compiled(comp) == 0
    assert all(m._compiled_call_impl is None for m in decoder_layers(comp))


def test_a_model_without_decoder_layers_names_the_setting():
    with pytest.raises(ValueError, match=r"trainer.compile: Sequential declares no repeated decoder-layer class"):
        compile_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_polychromic_run_trains_with_compiled_layers(tmp_path, tiny_model_dir, monkeypatch):
    import polychromic.training.loop as loop

    seen = []

    def spy(model, *a, **k):
        seen.append(compile_layers(model, *a, **k))
        return seen[-1]

    monkeypatch.setattr(loop, "compile_layers", spy)
    cudnn, ce_loss = [], loop.ce_loss

    def spy_ce(*a, **k):  # trainer.cudnn_attention false (the default): cuDNN's SDPA is off inside the run
        cudnn.append(torch.backends.cuda.cudnn_sdp_enabled())
        return ce_loss(*a, **k)

    monkeypatch.setattr(loop, "ce_loss", spy_ce)
    torch.backends.cuda.enable_cudnn_sdp(True)
    cfg = cfg_of(settings(tmp_path, tiny_model_dir), ["objective.name=polychromic", "objective.diversity_weight=1.0",
                                                       "objective.quality=constant", "trainer.max_steps=2",
                                                       "trainer.compile=true"])
    run_dir = train(cfg)
    assert seen and seen[0] > 0
    assert cudnn and not any(cudnn) and torch.backends.cuda.cudnn_sdp_enabled()  # restored after the run
    assert read_state(run_dir)["status"] == "done" and (run_dir / "adapter" / "adapter_model.safetensors").is_file()
