"""The trusted evaluator: the evaluation of a checked program, compiled (ahead too) and as run."""

import contextlib

import pytest
import torch

import prepare
from autoresearch.evaluator import (Prepared, answer, batch_rows, block_sparse_attention, compiled, drop_dtype_checks,
                                    evaluate_program, graph_state, prepare_ahead, trial_rows, withheld)
from autoresearch import evaluator
from autoresearch.modelfile import check_program, load_program
from exports import Embed, Windowed, exported, saved


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


# -- compiled ahead: the campaign's last program, while the experiment trains ------------------------
def loaded(model, tmp_path, name, rows=64):
    """The model as the evaluator loads a handed-over one: exported (dynamic batch), saved, loaded, checked."""
    return load_program(str(saved(model, tmp_path, name, rows))).module(check_guards=False)


def prepared_from(model, tmp_path):
    """A Prepared program as prepare_ahead makes one, eager (on a GPU `fast` is its compiled form)."""
    module = loaded(model, tmp_path, "ahead.pt2")
    return Prepared(graph_state(module), module, contextlib.nullcontext())


def seeded(seed, make=lambda: Windowed()):
    torch.manual_seed(seed)
    return make()


@torch.no_grad()
def test_a_model_with_the_same_graph_runs_on_the_prepared_program_with_its_own_weights(tmp_path):
    prepared = prepared_from(seeded(0), tmp_path)
    trained = seeded(1)  # other weights: what another run of the same train.py hands over
    x = torch.randint(0, 10, (3, 256))
    assert not torch.allclose(prepared.fast(x), trained(x))
    assert prepared.take(loaded(trained, tmp_path, "model.pt2"))
    assert torch.allclose(prepared.fast(x), trained(x), atol=1e-6)


@torch.no_grad()
def test_a_model_whose_constant_mask_differs_is_not_taken_and_the_prepared_one_is_unchanged(tmp_path):
    """Only parameters are copied in: a constant (here the window's mask) must be equal, value for value."""
    prepared = prepared_from(seeded(0), tmp_path)
    x = torch.randint(0, 10, (3, 256))
    before = prepared.fast(x)
    assert not prepared.take(loaded(seeded(1, lambda: Windowed(window=32)), tmp_path, "model.pt2"))
    assert torch.equal(prepared.fast(x), before)


def test_a_model_with_another_graph_is_not_taken(tmp_path):
    class Doubled(Windowed):
        def forward(self, x):
            return super().forward(x) * 2
    assert not prepared_from(seeded(0), tmp_path).take(loaded(seeded(0, Doubled), tmp_path, "model.pt2"))


class TwoHeads(Embed):
    """Two output matrices: tied (one Parameter under two names) or apart."""
    def __init__(self, tied):
        super().__init__()
        self.a = torch.nn.Linear(10, 10, bias=False)
        self.b = self.a if tied else torch.nn.Linear(10, 10, bias=False)

    def forward(self, x):
        h = self.e(x)
        return self.a(h) + 2 * self.b(h)


@torch.no_grad()
def test_a_model_whose_weights_are_tied_otherwise_is_not_taken(tmp_path):
    """Copied into a tied pair, two different matrices would become one: a function nobody handed over."""
    def export_of(tied, name):
        program = torch.export.export(TwoHeads(tied), (torch.randint(0, 10, (2, 5)),))
        torch.export.save(program, tmp_path / name)
        return load_program(str(tmp_path / name)).module(check_guards=False)
    tied, apart = export_of(True, "tied.pt2"), export_of(False, "apart.pt2")
    assert not Prepared(graph_state(tied), tied, contextlib.nullcontext()).take(apart)
    assert not Prepared(graph_state(apart), apart, contextlib.nullcontext()).take(tied)


class SmokeLM(torch.nn.Module):
    """A small causal language model over the smoke vocabulary: the embedding of each token, then a
    causal mean of the context so far, then the output head."""

    def __init__(self, vocab):
        super().__init__()
        self.e, self.head = torch.nn.Embedding(vocab, 32), torch.nn.Linear(32, vocab)

    def forward(self, x):
        h = self.e(x)
        steps = torch.arange(1, x.size(1) + 1, device=x.device)[None, :, None]
        return self.head(h.cumsum(1) / steps).float()


def handed_over(model, tmp_path, name):
    path = tmp_path / name
    prepare.export_model(model, 4, str(path))
    return str(path)


def test_the_evaluation_on_a_prepared_program_gives_the_models_own_val_bpb(smoke_cache, tmp_path):
    tok = prepare.Tokenizer.from_directory()
    earlier = handed_over(seeded(0, lambda: SmokeLM(tok.get_vocab_size())), tmp_path, "earlier.pt2")
    model = handed_over(seeded(1, lambda: SmokeLM(tok.get_vocab_size())), tmp_path, "model.pt2")
    prepared = prepare_ahead(earlier, prepare, tok)
    assert evaluate_program(model, 8, prepare, tok, prepared) == evaluate_program(model, 8, prepare, tok)
    assert evaluate_program(earlier, 8, prepare, tok) != evaluate_program(model, 8, prepare, tok)


def test_a_prepared_program_the_model_does_not_match_is_let_go_before_the_evaluation(smoke_cache, tmp_path):
    """Its weights and compiled code would hold GPU memory the evaluation needs."""
    class Halved(SmokeLM):
        def forward(self, x):
            return super().forward(x) / 2
    tok = prepare.Tokenizer.from_directory()
    earlier = handed_over(seeded(0, lambda: SmokeLM(tok.get_vocab_size())), tmp_path, "earlier.pt2")
    model = handed_over(seeded(0, lambda: Halved(tok.get_vocab_size())), tmp_path, "model.pt2")
    prepared = prepare_ahead(earlier, prepare, tok)
    assert evaluate_program(model, 8, prepare, tok, prepared) == evaluate_program(model, 8, prepare, tok)
    assert not prepared.taken and prepared.fast is None


class Lookup(torch.nn.Module):
    """Logits from a table of 10 rows indexed by the input tokens: past the table for most tokens, on any
    input; the index out of bounds names a token."""

    def __init__(self, vocab):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(10, vocab))

    def forward(self, x):
        return self.table[x]


class StartsWithBOS(torch.nn.Module):
    """Fails only where a row starts with the BOS token, as validation rows do and random tokens almost
    never: a table of one row, indexed by 5 there."""

    def __init__(self, vocab, bos):
        super().__init__()
        self.bos, self.table = bos, torch.nn.Parameter(torch.zeros(1, vocab))

    def forward(self, x):
        where = (x[:, :1] == self.bos).long() * 5
        return self.table[where].expand(-1, x.size(1), -1)


def test_an_error_on_the_validation_rows_only_comes_back_without_its_message(smoke_cache, tmp_path):
    tok = prepare.Tokenizer.from_directory()
    model = handed_over(StartsWithBOS(tok.get_vocab_size(), tok.get_bos_token_id()), tmp_path, "model.pt2")
    error = answer({"model": model, "batch_size": 4}, prepare, tok)["error"]
    assert error == ("IndexError on the validation rows only, not on random tokens; its message is withheld "
                     "(it could carry validation tokens)"), error


def test_an_error_the_program_makes_on_any_tokens_says_what_it_is(smoke_cache, tmp_path):
    tok = prepare.Tokenizer.from_directory()
    model = handed_over(Lookup(tok.get_vocab_size()), tmp_path, "model.pt2")
    error = answer({"model": model, "batch_size": 4}, prepare, tok)["error"]
    assert error.startswith("IndexError: index ") and error.endswith("(on random tokens too)"), error


class Flat(torch.nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(vocab, 3))

    def forward(self, x):
        return self.table[x]  # (B, T, 3): not logits over the vocabulary


def test_a_model_that_returns_the_wrong_shape_is_told_which(smoke_cache, tmp_path):
    tok = prepare.Tokenizer.from_directory()
    model = handed_over(Flat(tok.get_vocab_size()), tmp_path, "model.pt2")
    error = answer({"model": model, "batch_size": 4}, prepare, tok)["error"]
    assert error == (f"the model must return logits of shape (B, T, vocab); on random tokens it returned "
                     f"(2, {prepare.MAX_SEQ_LEN}, 3)"), error


def test_numbers_in_an_evaluation_error_are_withheld_but_names_stay():
    assert withheld("index 4521 is out of bounds at 0x7f3a; float32 conv2d bf16 -12, changed by 1.5e-05.") == \
        "index # is out of bounds at #; float32 conv2d bf16 -#, changed by #."


def test_a_previous_program_that_cannot_be_loaded_prepares_nothing(smoke_cache, tmp_path, capsys):
    (tmp_path / "ahead.pt2").write_bytes(b"not a program")
    assert prepare_ahead(str(tmp_path / "ahead.pt2"), prepare, prepare.Tokenizer.from_directory()) is None
    assert "the previous program was not compiled ahead" in capsys.readouterr().err


@torch.no_grad()
def test_a_model_accepting_other_batch_sizes_is_not_taken(tmp_path):
    """A kept program exported for at most 4 rows would refuse the next model's batches of 64."""
    few = loaded(seeded(0), tmp_path, "few.pt2", rows=4)
    assert not Prepared(graph_state(few), few, contextlib.nullcontext()).take(loaded(seeded(1), tmp_path, "many.pt2"))


class Sharing(Embed):
    """A second matrix that is a view of the first one's memory: copying one in would change the other."""
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.randn(20, 10))
        self.b = torch.nn.Parameter(self.a.data[:10])

    def forward(self, x):
        return self.e(x) @ self.a.T[:, :10] + self.e(x) @ self.b


def test_a_program_whose_tensors_share_memory_is_neither_prepared_nor_taken(tmp_path):
    shared = check_program(exported(Sharing(), tmp_path)).module(check_guards=False)
    assert graph_state(shared)[2] is False
    assert not Prepared(graph_state(shared), shared, contextlib.nullcontext()).take(shared)


@torch.no_grad()
def test_a_mask_held_as_a_parameter_is_compared_by_value(tmp_path):
    """A boolean mask registered as a parameter is no weight: copied in, it would meet block masks made
    from the earlier one's values."""
    class MaskParameter(Windowed):
        def __init__(self, window=64):
            super().__init__(window=window)
            self.mask = torch.nn.Parameter(self.mask, requires_grad=False)
    prepared = prepared_from(seeded(0, MaskParameter), tmp_path)
    assert not prepared.take(loaded(seeded(0, lambda: MaskParameter(window=32)), tmp_path, "model.pt2"))


def test_one_compilation_serves_every_call_of_the_evaluation(smoke_cache, tmp_path):
    """The batches (views of longer rows, in rows of a power of two) and the causality probes (contiguous)
    run on what dynamo compiled for the trial rows: a recompilation costs tens of seconds on a GPU."""
    from torch._inductor.compile_fx import compile_fx
    tok = prepare.Tokenizer.from_directory()
    path = handed_over(seeded(0, lambda: SmokeLM(tok.get_vocab_size())), tmp_path, "model.pt2")
    module = load_program(path).module(check_guards=False)
    compilations = []

    def inductor(graph, inputs):  # inductor itself (on the CPU): its lowering adds the layout's guards
        compilations.append(graph)
        return compile_fx(graph, inputs)
    torch._dynamo.reset()
    state = graph_state(module)
    prepared = Prepared(state, *compiled(module, trial_rows(prepare, tok), contextlib.nullcontext(), backend=inductor))
    expected = evaluate_program(path, 7, prepare, tok)
    assert evaluate_program(path, 7, prepare, tok, prepared) == pytest.approx(expected, rel=1e-6)
    assert prepared.taken and len(compilations) == 1


def test_compiled_batches_are_a_power_of_two_rows_within_32_bit_indexing():
    assert batch_rows(128, 127) == 64  # 127 rows of 2048 x 8192 logits: under 2**31 elements
    assert batch_rows(7, 127) == 4
    assert batch_rows(1, 127) == 1
    assert batch_rows(128, 0) == 1


def test_a_previous_program_too_large_to_sit_beside_the_training_is_not_loaded(tmp_path, monkeypatch, capsys):
    """An earlier run's huge model, loaded on the GPU while this run trains, would take its memory."""
    class Card:
        total_memory = 32 * 1000
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Card())
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda fraction: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.export, "load", lambda path: pytest.fail("the program was loaded"))
    (tmp_path / "ahead.pt2").write_bytes(b"x" * 1001)
    assert prepare_ahead(str(tmp_path / "ahead.pt2"), None, None) is None
    assert "over 1/32 of the GPU's memory" in capsys.readouterr().err


class Padded(SmokeLM):
    """SmokeLM with its logits padded by columns no token has (-1e4: the same val_bpb), `extra` of them."""

    def __init__(self, vocab, extra):
        super().__init__(vocab)
        self.extra = extra

    def forward(self, x):
        logits = super().forward(x)
        return torch.cat([logits, logits.new_full((*logits.shape[:2], self.extra), -1e4)], dim=-1)


def test_logits_padded_far_past_the_vocabulary_are_refused(smoke_cache, tmp_path):
    """The run sizes the evaluation's memory with its logits' width and its batch: padded until the
    evaluator fills the machine, the model is refused before it runs."""
    tok = prepare.Tokenizer.from_directory()
    model = handed_over(Padded(tok.get_vocab_size(), 16 * 1024), tmp_path, "model.pt2")
    error = answer({"model": model, "batch_size": 4096}, prepare, tok)["error"]
    assert error == (f"the model returns logits {tok.get_vocab_size() + 16 * 1024} wide for a vocabulary of "
                     f"{tok.get_vocab_size()}: at most 256 columns more are allowed")


def test_a_vocabulary_padded_for_the_kernels_is_evaluated_as_it_is(smoke_cache, tmp_path):
    tok = prepare.Tokenizer.from_directory()
    plain = handed_over(seeded(0, lambda: SmokeLM(tok.get_vocab_size())), tmp_path, "plain.pt2")
    padded = handed_over(seeded(0, lambda: Padded(tok.get_vocab_size(), 64)), tmp_path, "padded.pt2")
    assert evaluate_program(padded, 8, prepare, tok) == pytest.approx(evaluate_program(plain, 8, prepare, tok))


def test_an_eager_batch_holds_a_bounded_number_of_logits(smoke_cache, tmp_path, monkeypatch):
    """On the CPU the program runs eagerly on the batch the run asked for: its logits are bounded as a
    compiled program's batches are."""
    tok = prepare.Tokenizer.from_directory()
    model = handed_over(SmokeLM(tok.get_vocab_size()), tmp_path, "model.pt2")
    batches = []
    monkeypatch.setattr(prepare, "evaluate_bpb", lambda module, tokenizer, batch_size: batches.append(batch_size))
    evaluate_program(model, 4096, prepare, tok)
    assert batches[0] * prepare.MAX_SEQ_LEN * tok.get_vocab_size() <= evaluator.EAGER_LOGITS < 4096 * \
        prepare.MAX_SEQ_LEN * tok.get_vocab_size()


class PaddedByBatch(SmokeLM):
    """SmokeLM padded with a column per row of its batch: a width torch.export keeps symbolic."""

    def forward(self, x):
        logits = super().forward(x)
        return torch.cat([logits, logits.new_full((*logits.shape[:2], x.size(0)), -1e4)], dim=-1)


def test_logits_whose_width_grows_with_the_batch_are_refused(smoke_cache, tmp_path):
    tok = prepare.Tokenizer.from_directory()
    model = handed_over(PaddedByBatch(tok.get_vocab_size()), tmp_path, "model.pt2")
    error = answer({"model": model, "batch_size": 4096}, prepare, tok)["error"]
    assert error.startswith("the model returns logits whose width depends on its input ("), error
