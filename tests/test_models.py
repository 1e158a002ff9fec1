"""models.py: factories, seeding, tied weights, load_factory, check_model, reference_step, to_dtype. No MPI."""
import copy
import math

import pytest
import torch
from torch import nn

from pipeline_ref import models
from pipeline_ref.models import batches

SMALL_GPT = {"vocab": 32, "dim": 16, "heads": 2, "blocks": 2, "seq_len": 8, "batch": 6}


def _build(factory, init_seed=0, **options):
    torch.manual_seed(init_seed)    # the caller seeds the init; options may hold the factory's data seed
    return factory(**options)


def _forward(layers, x):
    return nn.Sequential(*layers)(x)


@pytest.mark.parametrize("name", sorted(models.FACTORIES))
def test_every_registered_factory_runs_with_its_defaults(name):
    layers, loss_fn, data = _build(models.FACTORIES[name])
    inputs, targets = batches.first_batch(data)        # text_gpt gives a batch per step
    assert isinstance(layers, list) and all(isinstance(layer, nn.Module) for layer in layers)
    models.check_model(layers, loss_fn, (inputs, targets))
    loss = loss_fn(_forward(layers, inputs), targets)
    assert loss.dim() == 0 and math.isfinite(loss.item())


def test_mlp_shapes():
    layers, loss_fn, (inputs, targets) = _build(models.mlp, depth=5, width=8, batch=12)
    assert len(layers) == 5 and inputs.shape == targets.shape == (12, 8)
    assert _forward(layers, inputs).shape == (12, 8)


def test_tiny_gpt_shapes_and_initial_loss():
    layers, loss_fn, (inputs, targets) = _build(models.tiny_gpt, **SMALL_GPT)
    assert len(layers) == SMALL_GPT["blocks"] + 2
    assert inputs.shape == targets.shape == (6, 8) and inputs.dtype == torch.long
    assert torch.equal(inputs[:, 1:], targets[:, :-1])        # targets are the next tokens
    hidden = layers[0](inputs)
    assert hidden.shape == (6, 8, 16) and layers[1](hidden).shape == (6, 8, 16)
    logits = _forward(layers, inputs)
    assert logits.shape == (6, 8, 32)
    assert abs(loss_fn(logits, targets).item() - math.log(32)) < 1.0    # near-uniform predictions at init


def test_tiny_gpt_is_causal():
    layers, _, (inputs, _) = _build(models.tiny_gpt, **SMALL_GPT)
    changed = inputs.clone()
    changed[:, 5] = (changed[:, 5] + 1) % SMALL_GPT["vocab"]
    before, after = _forward(layers, inputs), _forward(layers, changed)
    torch.testing.assert_close(before[:, :5], after[:, :5])       # the past does not see the future
    assert not torch.allclose(before[:, 5:], after[:, 5:])


@pytest.mark.parametrize("factory, options", [(models.mlp, {"width": 8, "batch": 12}), (models.tiny_gpt, SMALL_GPT)])
def test_mean_over_equal_microbatches_is_the_full_batch_loss(factory, options):
    layers, loss_fn, (inputs, targets) = _build(factory, **options)
    models.to_dtype(layers, (inputs, targets), torch.float64)
    inputs = inputs.double() if inputs.is_floating_point() else inputs
    targets = targets.double() if targets.is_floating_point() else targets
    full = loss_fn(_forward(layers, inputs), targets)
    parts = [loss_fn(_forward(layers, x), t) for x, t in zip(inputs.tensor_split(3), targets.tensor_split(3))]
    torch.testing.assert_close(torch.stack(parts).mean(), full, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("factory, options", [(models.mlp, {"width": 8}), (models.tiny_gpt, SMALL_GPT)])
def test_same_seed_same_model_and_data_other_seed_other_data(factory, options):
    layers_a, _, (x_a, y_a) = _build(factory, init_seed=3, **options)
    layers_b, _, (x_b, y_b) = _build(factory, init_seed=3, **options)
    for p, q in zip(nn.Sequential(*layers_a).parameters(), nn.Sequential(*layers_b).parameters()):
        assert torch.equal(p, q)
    assert torch.equal(x_a, x_b) and torch.equal(y_a, y_b)
    # The data comes from the factory's own generator: another init seed leaves it as it is ...
    layers_c, _, (x_c, y_c) = _build(factory, init_seed=4, **options)
    assert torch.equal(x_a, x_c) and torch.equal(y_a, y_c)
    assert not torch.equal(next(nn.Sequential(*layers_a).parameters()), next(nn.Sequential(*layers_c).parameters()))
    # ... and another data seed changes it.
    _, _, (x_d, y_d) = _build(factory, init_seed=3, seed=1, **options)
    assert not torch.equal(x_a, x_d) and not torch.equal(y_a, y_d)


def test_tied_weights_share_one_parameter_reported_once():
    layers, loss_fn, (inputs, targets) = _build(models.tiny_gpt, tie_weights=True, **SMALL_GPT)
    assert layers[-1].out.weight is layers[0].token.weight
    loss, grads = models.reference_step(layers, loss_fn, inputs, targets)
    names = [name for name, _ in nn.Sequential(*layers).named_parameters()]
    assert "0.token.weight" in grads and f"{len(layers) - 1}.out.weight" not in grads
    assert sorted(grads) == sorted(names)
    # The shared gradient is the sum of its two uses: untie a copy and add the embedding's and the head's.
    untied = copy.deepcopy(layers)
    untied[-1].out.weight = nn.Parameter(untied[0].token.weight.detach().clone())
    untied_loss, untied_grads = models.reference_step(untied, loss_fn, inputs, targets)
    assert untied_loss == pytest.approx(loss, rel=1e-6)
    torch.testing.assert_close(grads["0.token.weight"],
                               untied_grads["0.token.weight"] + untied_grads[f"{len(layers) - 1}.out.weight"])
    models.to_dtype(layers, (inputs, targets), torch.float64)
    assert layers[-1].out.weight is layers[0].token.weight and layers[0].token.weight.dtype == torch.float64


def test_untied_gpt_has_separate_head_weight():
    layers, loss_fn, (inputs, targets) = _build(models.tiny_gpt, **SMALL_GPT)
    assert layers[-1].out.weight is not layers[0].token.weight
    _, grads = models.reference_step(layers, loss_fn, inputs, targets)
    assert f"{len(layers) - 1}.out.weight" in grads and "0.token.weight" in grads


def test_reference_step_matches_autograd_on_the_sequential_and_leaves_grad_alone():
    layers, loss_fn, (inputs, targets) = _build(models.mlp, depth=3, width=4, batch=6)
    loss, grads = models.reference_step(layers, loss_fn, inputs, targets)
    assert all(p.grad is None for layer in layers for p in layer.parameters())
    model = nn.Sequential(*layers)
    expected = loss_fn(model(inputs), targets)
    expected.backward()
    assert loss == expected.item() and isinstance(loss, float)
    assert list(grads) == [name for name, _ in model.named_parameters()]
    for name, p in model.named_parameters():
        assert torch.equal(grads[name], p.grad), name


def test_to_dtype_converts_floats_and_keeps_token_ids():
    layers, _, batch = _build(models.tiny_gpt, **SMALL_GPT)
    layers, (inputs, targets) = models.to_dtype(layers, batch, torch.float64)
    assert {p.dtype for layer in layers for p in layer.parameters()} == {torch.float64}
    assert inputs.dtype == targets.dtype == torch.long
    layers, _, batch = _build(models.mlp, width=4)
    layers, (inputs, targets) = models.to_dtype(layers, batch, torch.float64)
    assert inputs.dtype == targets.dtype == torch.float64
    with pytest.raises(ValueError, match="floating"):
        models.to_dtype(layers, (inputs, targets), torch.int64)


def test_load_factory_by_name_and_by_path():
    assert models.load_factory("gpt") is models.tiny_gpt
    assert models.load_factory("pipeline_ref.models:mlp") is models.mlp
    assert models.load_factory("tests.rank_targets:user_model")()[1] is nn.functional.mse_loss


@pytest.mark.parametrize("spec, message", [
    ("no_such_package.models:factory", r"'no_such_package.models:factory'.*does not import: ModuleNotFoundError"),
    ("pipeline_ref.models:no_such_factory", r"'pipeline_ref.models:no_such_factory'.*no attribute 'no_such_factory'"),
    ("pipeline_ref.models:FACTORIES", r"'pipeline_ref.models:FACTORIES'.*is a dict, not a callable"),
    ("transformer", r"unknown model 'transformer': use one of mlp, gpt, gpt_tied"),
    (":mlp", r"unknown model ':mlp'"),
])
def test_load_factory_failures_name_the_spec(spec, message):
    with pytest.raises(ValueError, match=message):
        models.load_factory(spec)


def _mlp_parts():
    return _build(models.mlp, depth=2, width=4, batch=4)


class _Pair(nn.Module):
    def forward(self, x):
        return x, x


class _Counter(nn.Module):
    """Counts its calls and draws a random number each time, as a layer with noise would."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x + 0 * torch.rand(())


@pytest.mark.parametrize("mutate, error, message", [
    (lambda l, f, b: (nn.Sequential(*l), f, b), TypeError, r"got Sequential; for an nn.Sequential return list"),
    (lambda l, f, b: ([], f, b), ValueError, "no layers"),
    (lambda l, f, b: ([*l, torch.tanh], f, b), TypeError, "layer 2 is a builtin_function_or_method"),
    (lambda l, f, b: (l, "mse", b), TypeError, "loss_fn is a str"),
    (lambda l, f, b: (l, f, b[0]), TypeError, "pair \\(inputs, targets\\), got Tensor"),
    (lambda l, f, b: (l, f, (*b, b[0])), TypeError, "of length 3"),
    (lambda l, f, b: (l, f, (b[0], b[1].tolist())), TypeError, "targets must be a torch.Tensor, got list"),
    (lambda l, f, b: (l, f, (b[0], b[1][:3])), ValueError, r"first dimension \(3\) is neither the batch's \(4\) nor a multiple"),
    (lambda l, f, b: ([l[0], _Pair(), l[1]], f, b), TypeError, "layer 1 \\(_Pair\\) returns a tuple"),
    (lambda l, f, b: ([*l, nn.Linear(7, 2)], f, b), ValueError, "layer 2 \\(Linear\\) fails on one sample"),
    (lambda l, f, b: (l, lambda y, t: (y - t) ** 2, b), ValueError, "scalar tensor.*got \\(1, 4\\)"),
])
def test_check_model_refuses_what_a_pipeline_cannot_run(mutate, error, message):
    layers, loss_fn, batch = mutate(*_mlp_parts())
    with pytest.raises(error, match=message):
        models.check_model(layers, loss_fn, batch)


def test_check_model_probe_leaves_layers_and_rng_alone():
    layers, loss_fn, batch = _mlp_parts()
    counter = _Counter()
    torch.manual_seed(5)
    models.check_model([*layers, counter], loss_fn, batch)
    assert counter.calls == 0                           # the probe ran a copy
    after_check = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after_check, torch.rand(3))      # and drew no random numbers of the caller's
