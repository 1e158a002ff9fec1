"""finite.nonfinite: one sum per tensor, yet exactly what ``torch.isfinite`` would say, overflow included."""
import pytest
import torch

from pipeline_ref.faults.finite import nonfinite


def _exact(tensors):
    # The definition the cheap check must agree with: element by element.
    for t in tensors:
        if t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return "nan" if bool(torch.isnan(t).any()) else "inf"
    return None


DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad, kind", [(float("nan"), "nan"), (float("inf"), "inf"), (float("-inf"), "inf")])
def test_a_single_bad_element_is_found_and_named(dtype, bad, kind):
    t = torch.randn(64, 33, dtype=torch.float64).to(dtype)
    t[17, 5] = bad
    assert nonfinite([t]) == kind == _exact([t])
    assert nonfinite([torch.ones(3, dtype=dtype), t]) == kind       # not only in the first tensor


@pytest.mark.parametrize("dtype", DTYPES)
def test_finite_values_whose_sum_overflows_are_finite(dtype):
    big = torch.finfo(dtype).max / 2
    t = torch.full((1000,), big, dtype=dtype)       # every element finite; their sum is not
    assert nonfinite([t]) is None is _exact([t])
    assert nonfinite([t, -t]) is None               # +inf and -inf totals would make a NaN: still finite


def test_inf_and_minus_inf_in_one_tensor_is_inf_not_nan():
    t = torch.tensor([1.0, float("inf"), float("-inf")])      # sums to NaN; no element is NaN
    assert nonfinite([t]) == "inf"


def test_nan_wins_over_inf_when_both_are_present():
    assert nonfinite([torch.tensor([float("inf"), float("nan")])]) == "nan"


def test_what_is_not_a_floating_tensor_is_ignored():
    assert nonfinite([]) is None
    assert nonfinite([None, torch.arange(5), torch.empty(0), torch.ones(2, dtype=torch.bool)]) is None
    assert nonfinite(p for p in [None, torch.tensor([float("nan")])]) == "nan"   # a generator, as for p.grad


def test_agrees_with_the_exact_check_on_random_tensors():
    generator = torch.Generator().manual_seed(0)
    for trial in range(200):
        dtype = DTYPES[trial % len(DTYPES)]
        tensors = [torch.randn(int(torch.randint(1, 50, (1,), generator=generator)), generator=generator,
                               dtype=torch.float64).mul(10.0 ** int(torch.randint(0, 6, (1,), generator=generator)))
                   .to(dtype) for _ in range(3)]
        if trial % 4:                             # three in four trials hold one bad element somewhere
            tensors[trial % 3].view(-1)[0] = [float("nan"), float("inf"), -float("inf")][trial % 4 - 1]
        assert nonfinite(tensors) == _exact(tensors), (trial, dtype)
