"""The whole-module factories (pipeline_ref/models/hf_models.py): Hugging Face GPT-2 and Llama from small configs with
random weights (nothing downloaded), and the skip-connection net; what --model gets from each."""
import math

import pytest
import torch

from pipeline_ref import models
from pipeline_ref.models import hf_models
from pipeline_ref.config import RunConfig
from pipeline_ref.preflight import build_model

pytest.importorskip("transformers")


@pytest.mark.parametrize("name", ["hf_gpt2", "hf_llama", "pipeline_ref.models.hf_models:skip_net"])
def test_factories_give_a_whole_module_the_checks_accept(name):
    module, loss_fn, (inputs, targets) = build_model(RunConfig(model=name, dtype="float64",
                                                               model_kwargs={"batch": 4}))
    assert isinstance(module, torch.nn.Module) and not isinstance(module, torch.nn.Sequential)
    assert all(p.dtype == torch.float64 for p in module.parameters())
    loss, grads = models.reference_step(module, loss_fn, inputs, targets)
    # named as the module names them, one gradient per parameter
    assert set(grads) == {n for n, _ in module.named_parameters()}
    if name != "pipeline_ref.models.hf_models:skip_net":
        assert not inputs.is_floating_point() and inputs.shape == targets.shape == (4, 16)
        assert abs(loss - math.log(128)) < 0.5        # random init: about the uniform guess


def test_gpt2_ties_its_embedding_and_head_and_llama_does_not():
    gpt2, _, _ = hf_models.gpt2()
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight
    models.to_dtype(gpt2, (torch.zeros(1), torch.zeros(1)), torch.float64)     # Module.to keeps the tie
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight
    untied, _, _ = hf_models.gpt2(tie_weights=False)
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    llama, _, _ = hf_models.llama()
    assert llama.lm_head.weight is not llama.model.embed_tokens.weight


def test_small_configs_and_seeded_weights():
    torch.manual_seed(0)
    a, _, (x, _) = hf_models.gpt2(blocks=2, dim=48, heads=4, vocab=100)
    torch.manual_seed(0)
    b, _, (y, _) = hf_models.gpt2(blocks=2, dim=48, heads=4, vocab=100)
    assert len(a.transformer.h) == 2 and a.transformer.wte.weight.shape == (100, 48)
    assert torch.equal(x, y) and all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    llama, _, _ = hf_models.llama(blocks=3, dim=64, heads=4, kv_heads=2, vocab=256)
    assert len(llama.model.layers) == 3 and llama.lm_head.weight.shape == (256, 64)


def test_loss_takes_a_model_output_or_logits():
    logits = torch.randn(2, 3, 5)
    targets = torch.randint(0, 5, (2, 3))
    from transformers.modeling_outputs import CausalLMOutput
    assert torch.equal(hf_models.lm_loss(CausalLMOutput(logits=logits), targets), hf_models.lm_loss(logits, targets))
