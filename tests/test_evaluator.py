"""The trusted evaluator's check of a handed-over program, before anything of it runs."""

import pytest
import torch

from autoresearch.evaluator import Rejected, block_sparse_attention, check_program, drop_dtype_checks


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


class FloatLogits(Embed):
    """Ends as train.py's GPT does: logits cast to fp32 (export checks the cast's input dtype)."""
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(10, 10)

    def forward(self, x):
        return self.head(self.e(x)).float() * 2


@torch.no_grad()
def test_under_bf16_autocast_a_program_without_its_dtype_checks_computes_what_the_model_does(tmp_path):
    """The evaluator runs a GPU program under bf16 autocast, as train.py evaluates by hand: the dtype
    assertions export puts before each cast stop it, and are all that is dropped."""
    model = FloatLogits()
    module = check_program(exported(model, tmp_path)).module()
    x = torch.randint(0, 10, (2, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(RuntimeError, match="dtype mismatch"):
        module(x)
    computing = [n.target for n in module.graph.nodes if n.target is not torch.ops.aten._assert_tensor_metadata.default]
    assert drop_dtype_checks(module) == 1
    assert [n.target for n in module.graph.nodes] == computing
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(module(x), model(x))
