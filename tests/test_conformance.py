"""Every registered method, built-in or plugin, must honour the selector contract."""

import pytest
import torch
from hypothesis import given

import tokenprune
from tokenprune.testing import assert_conforms, degenerate_cases, token_cases

METHODS = tokenprune.list_methods()


def test_the_registry_has_the_builtins():
    assert {"zspa", "divprune", "relevance", "random", "stride", "attention"} <= set(METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_degenerate_battery(name):
    assert_conforms(tokenprune.create_method(name))


@pytest.mark.parametrize("name", METHODS)
def test_degenerate_battery_float64(name):
    assert_conforms(tokenprune.create_method(name), degenerate_cases(torch.float64))


@pytest.mark.parametrize("name", METHODS)
def test_half_precision_inputs(name):
    """fp16/bf16 tokens (what real models produce) are selected in float32 and give the same answer."""
    method = tokenprune.create_method(name)
    for dtype in (torch.float16, torch.bfloat16):
        for case in degenerate_cases(dtype)[:3]:
            assert_conforms(method, case)
            upcast = case.__class__(**{**case.__dict__, "visual": case.visual.float(), "prompt": case.prompt.float()})
            assert torch.equal(method(case.visual, **case.kwargs()), method(upcast.visual, **upcast.kwargs()))


def test_scores_keep_their_own_precision_whatever_the_tokens_dtype():
    """float64 scores 1e-12 apart are not a tie, and 1e39 is finite: float32 tokens do not round them."""
    attention = tokenprune.create_method("attention")
    scores = torch.tensor([[1.0, 1.0 + 1e-12, 0.5, 0.0]], dtype=torch.float64)
    for dtype in (torch.float32, torch.float64, torch.float16):
        assert attention(torch.randn(1, 4, 3).to(dtype), scores=scores, budget=1).tolist() == [[1]]
    large = torch.tensor([[1e39, 0.0, 2.0, 1.0]], dtype=torch.float64)
    assert attention(torch.randn(1, 4, 3), scores=large, budget=2).tolist() == [[0, 2]]
    assert attention(torch.randn(1, 4, 3), scores=torch.tensor([[0.5, 0.25, 1.0, 0.0]]).half(), budget=1).tolist() == [
        [2]
    ]


def test_a_missing_input_names_the_method_once():
    with pytest.raises(tokenprune.MissingInputError) as error:
        tokenprune.create_method("zspa")(torch.randn(1, 4, 3), budget=2)
    assert str(error.value).count("method 'zspa'") == 1


@pytest.mark.parametrize("name", METHODS)
@given(case=token_cases())
def test_random_cases(name, case):
    assert_conforms(tokenprune.create_method(name), case)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", METHODS)
def test_cuda_matches_cpu(name):
    method = tokenprune.create_method(name)
    for case in degenerate_cases(torch.float64):
        assert_conforms(method, case, device="cuda")
        gpu = method(case.to("cuda").visual, **case.to("cuda").kwargs())
        assert gpu.device.type == "cuda"
        assert torch.equal(gpu.cpu(), method(case.visual, **case.kwargs()))


def test_conformance_catches_a_broken_selector():
    """The check itself must fail on a selector that breaks the contract."""
    from tokenprune.selector import Selection
    from tokenprune.stages import Stride

    class Descending(Stride):
        def __call__(self, visual, **kwargs):
            return super().__call__(visual, **kwargs).flip(-1)

    class ForgetsPrompt(Stride):  # declares a prompt but never checks for it
        requires = frozenset({"prompt"})

        def check_inputs(self, tokens, *, label=None):
            pass

    class Mutates(Stride):
        def extend(self, tokens, selection: Selection, target):
            tokens.visual.add_(1.0)  # float32 input: visual is the caller's tensor itself
            return super().extend(tokens, selection, target)

    case = degenerate_cases()[0]
    with pytest.raises(AssertionError, match="ascending"):
        assert_conforms(Descending(), case)
    with pytest.raises(AssertionError, match="without prompt"):
        assert_conforms(ForgetsPrompt(), case)
    plain = tokenprune.testing.make_case()  # no mask: selection sees the caller's float32 tensor
    with pytest.raises(AssertionError, match="mutated"):
        assert_conforms(Mutates(), plain)


@pytest.mark.parametrize("change", ["nan_to_zero", "prompt_mask"])
def test_conformance_catches_a_selector_that_cleans_or_unmasks_its_inputs(change):
    """Replacing NaN (garbage padding) with 0 is a mutation too, and so is changing the prompt mask."""
    from tokenprune.stages import Stride

    class Cleans(Stride):
        def __call__(self, visual, **kwargs):
            if change == "nan_to_zero":
                visual.nan_to_num_(0.0)
            else:
                kwargs["prompt_mask"][0, 0] = not bool(kwargs["prompt_mask"][0, 0])
            return super().__call__(visual, **{k: v for k, v in kwargs.items() if k not in ("prompt", "prompt_mask")})

    ragged = next(
        case
        for case in degenerate_cases()
        if case.visual_mask is not None and case.prompt_mask is not None and bool(case.visual.isnan().any())
    )
    name = "visual" if change == "nan_to_zero" else "prompt_mask"
    with pytest.raises(AssertionError, match=f"mutated its input '{name}'"):
        assert_conforms(Cleans(), ragged)
