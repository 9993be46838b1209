"""The plugin's own tests: a template for yours. Run ``pytest`` in this folder after ``pip install -e ".[test]"``.

tokenprune's public test helpers do the heavy lifting: ``assert_conforms`` runs the selector contract
(shapes, dtype, ordering, determinism, batched == row by row, ragged masks, degenerate inputs, errors)
on a fixed battery of cases, and ``token_cases`` draws random ones with hypothesis.
"""

import pytest
import tokenprune
import torch
from hypothesis import given
from tokenprune.testing import assert_conforms, token_cases

from tokenprune_mmr import MMR


def test_registered_through_the_entry_point():
    assert "mmr" in tokenprune.list_methods()
    assert tokenprune.get_method_spec("mmr").plugin == "mmr"


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_conforms(lam):
    assert_conforms(tokenprune.create_method("mmr", lam=lam))


@given(token_cases())
def test_conforms_on_random_cases(case):
    assert_conforms(MMR(), case)


def test_lam_1_is_relevance():
    visual, prompt = torch.randn(2, 50, 8), torch.randn(2, 4, 8)
    mmr = tokenprune.create_method("mmr", lam=1.0)
    assert torch.equal(
        mmr(visual, prompt=prompt, budget=0.2), tokenprune.create_method("relevance")(visual, prompt=prompt, budget=0.2)
    )


def test_bad_lam():
    with pytest.raises(tokenprune.MethodParameterError, match="lam must be a number in"):
        tokenprune.create_method("mmr", lam=2)
