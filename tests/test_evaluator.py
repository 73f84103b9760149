"""The trusted evaluator's check of a handed-over program, before anything of it runs."""

import pytest
import torch

from autoresearch.evaluator import Rejected, block_sparse_attention, check_program


def exported(module, tmp_path):
    """The module as the evaluator receives it: exported, saved, loaded back."""
    program = torch.export.export(module, (torch.randint(0, 10, (2, 5)),))
    torch.export.save(program, tmp_path / "model.pt2")
    return torch.export.load(tmp_path / "model.pt2")


class Embed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.e = torch.nn.Embedding(10, 10)


def test_a_model_that_counts_its_calls_is_rejected(tmp_path):
    class Counting(Embed):
        def __init__(self):
            super().__init__()
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x):
            self.calls.add_(1)  # could tell the causality probes from the real batches
            return self.e(x) * self.calls
    with pytest.raises(Rejected, match="changes its own state"):
        check_program(exported(Counting(), tmp_path))


def custom_operator(namespace):
    """A `peek` operator outside aten, as train.py could register one (the Library must stay alive)."""
    lib = torch.library.Library(namespace, "DEF")
    lib.define("peek(Tensor x) -> Tensor")
    lib.impl("peek", lambda x: x.clone(), "CompositeExplicitAutograd")
    torch.library.register_fake(f"{namespace}::peek", lambda x: torch.empty_like(x), lib=lib)
    return lib, getattr(torch.ops, namespace).peek


def test_an_operation_from_outside_aten_is_rejected(tmp_path):
    """A custom operator registered by train.py would run code the evaluator never vetted."""
    _lib, peek = custom_operator("autoresearch_attack")

    class Custom(Embed):
        def forward(self, x):
            return peek(self.e(x))
    program = torch.export.export(Custom(), (torch.randint(0, 10, (2, 5)),))
    with pytest.raises(Rejected, match="autoresearch_attack"):
        check_program(program)


def test_an_operation_hidden_in_a_branch_of_torch_cond_is_rejected(tmp_path):
    """The evaluator sees the validation rows: an operation in a subgraph could read them."""
    _lib, peek = custom_operator("autoresearch_branch")

    class Branching(Embed):
        def forward(self, x):
            y = self.e(x)
            return torch.cond(y.sum() > 0, lambda t: peek(t), lambda t: t * 2, (y,))
    program = torch.export.export(Branching(), (torch.randint(0, 10, (2, 5)),))
    with pytest.raises(Rejected, match="autoresearch_branch"):
        check_program(program)


def test_in_place_work_on_intermediates_is_accepted(tmp_path):
    class InPlace(Embed):
        def forward(self, x):
            y = self.e(x)
            y.mul_(2)  # local, not state: fine once the program is made functional
            return torch.relu_(y)
    program = check_program(exported(InPlace(), tmp_path))
    assert program.module()(torch.randint(0, 10, (2, 5))).shape == (2, 5, 10)


class Windowed(torch.nn.Module):
    """Attention over a sliding window (a constant boolean mask, as train.py exports it) and over the
    whole causal context, like train.py's S and L layers."""

    def __init__(self, T=256, window=64):
        super().__init__()
        self.e = torch.nn.Embedding(10, 4 * 32)
        i = torch.arange(T)
        self.mask = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)  # a constant, not a buffer

    def forward(self, x):
        B, T = x.shape
        q = k = v = self.e(x).view(B, T, 4, 32).transpose(1, 2)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
        y = torch.nn.functional.scaled_dot_product_attention(y, k, v, is_causal=True)
        return y.transpose(1, 2).reshape(B, T, -1)


@torch.no_grad()  # as the evaluator runs it
def test_masked_attention_runs_block_sparse_and_computes_the_same(tmp_path):
    batch = torch.export.Dim("batch", min=1, max=64)  # as prepare.export_model exports
    program = torch.export.export(Windowed(), (torch.randint(0, 10, (2, 256)),), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "model.pt2")
    module = check_program(torch.export.load(tmp_path / "model.pt2")).module()
    x = torch.randint(0, 10, (3, 256))
    before = module(x)
    assert block_sparse_attention(module) == 1  # the causal one needs no mask
    masks = [(node.args + (None,))[3] for node in module.graph.nodes
             if node.target is torch.ops.aten.scaled_dot_product_attention.default]
    assert masks == [None]
    assert torch.allclose(module(x), before, atol=1e-5)


@torch.no_grad()
def test_a_mask_with_a_query_that_sees_nothing_stays_as_it_was_exported(tmp_path):
    """flex_attention and scaled_dot_product_attention disagree on a row with no key to see."""
    model = Windowed()
    model.mask[0] = False
    program = torch.export.export(model, (torch.randint(0, 10, (2, 256)),))
    module = check_program(program).module()
    assert block_sparse_attention(module) == 0
