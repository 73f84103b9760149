"""evaluate_bpb: the metric every decision rests on."""

import math

import pytest
import torch

import prepare


class UniformModel(torch.nn.Module):
    """Logits all zero: every token costs ln(vocab) nats. Records what it was called with."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # evaluate_bpb finds the device from the parameters
        self.calls = []

    def forward(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        (x,) = args
        return torch.zeros(*x.shape, self.vocab)


def expected_uniform_bpb(tokenizer):
    rows = prepare._val_rows(tokenizer)
    token_bytes = torch.tensor(tokenizer.token_bytes())
    targets = rows[:, 1:].flatten()
    nbytes = token_bytes[targets]
    counted = int((nbytes > 0).sum())
    return counted * math.log(tokenizer.get_vocab_size()) / (math.log(2) * int(nbytes.sum()))


def test_uniform_logits_give_the_hand_computed_bpb(smoke_cache):
    tok = prepare.Tokenizer.from_directory()
    bpb = prepare.evaluate_bpb(UniformModel(tok.get_vocab_size()), tok, 16)
    assert bpb == pytest.approx(expected_uniform_bpb(tok), rel=1e-6)
    # sanity: ~10 bits per token spread over ~3-4 bytes per token
    assert 2.0 < bpb < 4.0


@pytest.mark.parametrize("batch_size", [1, 7, 64, 1000])
def test_exactly_eval_tokens_are_evaluated_whatever_the_batch_size(smoke_cache, batch_size):
    tok = prepare.Tokenizer.from_directory()
    model = UniformModel(tok.get_vocab_size())
    bpb = prepare.evaluate_bpb(model, tok, batch_size)
    n_rows = prepare.EVAL_TOKENS // prepare.MAX_SEQ_LEN
    batches = [min(batch_size, n_rows - i) for i in range(0, n_rows, batch_size)]
    # every eval batch once, and re-runs of eval batches with their endings swapped: PROBED_ROWS rows at
    # least, whatever the batches, and less than one batch more
    probed = sum(args[0].shape[0] for args, _ in model.calls) - n_rows
    target = max(prepare.PROBED_ROWS, prepare.PROBED_SHARE * n_rows)
    assert target <= probed < target + min(batch_size, n_rows)
    assert all(args[0].shape[0] in batches for args, _ in model.calls)  # probes look like eval batches
    assert bpb == pytest.approx(expected_uniform_bpb(tok), rel=1e-6)


def test_the_model_only_sees_inputs_never_targets(smoke_cache):
    tok = prepare.Tokenizer.from_directory()
    model = UniformModel(tok.get_vocab_size())
    prepare.evaluate_bpb(model, tok, 32)
    assert all(len(args) == 1 and not kwargs for args, kwargs in model.calls)
    assert all(args[0].shape[1] == prepare.MAX_SEQ_LEN for args, _ in model.calls)


def test_a_model_that_knows_the_answer_scores_near_zero(smoke_cache, monkeypatch):
    monkeypatch.setattr(prepare, "check_causal", lambda *args: None)  # the oracle reads ahead by design
    tok = prepare.Tokenizer.from_directory()
    rows = prepare._val_rows(tok)

    class Oracle(UniformModel):
        def forward(self, x):
            i = next(n for n in range(0, len(rows)) if torch.equal(rows[n, :-1], x[0]))
            logits = torch.full((*x.shape, self.vocab), -30.0)
            logits.scatter_(2, rows[i:i + len(x), 1:].unsqueeze(-1), 30.0)
            return logits
    assert prepare.evaluate_bpb(Oracle(tok.get_vocab_size()), tok, 64) < 1e-6


def test_wrong_logits_shape_is_refused(smoke_cache):
    tok = prepare.Tokenizer.from_directory()

    class Pooled(UniformModel):
        def forward(self, x):
            return torch.zeros(x.size(0), self.vocab)
    with pytest.raises(AssertionError, match="logits of shape"):
        prepare.evaluate_bpb(Pooled(tok.get_vocab_size()), tok, 8)


@pytest.mark.parametrize("leak", [30.0, 0.04], ids=["copies", "a-little"])
def test_a_model_that_peeks_at_future_tokens_is_refused(smoke_cache, leak):
    """Targets are the inputs shifted by one: a non-causal model could copy them and score ~0 bits. Even
    +0.04 on the next token's logit (it passed a 0.05 tolerance) was worth ~0.02 bpb on the smoke data;
    a causal model's logits before a cut do not move at all (the same computation on the same prefix)."""
    tok = prepare.Tokenizer.from_directory()

    class Peeking(UniformModel):
        def forward(self, x):
            logits = torch.zeros(*x.shape, self.vocab)
            logits[:, :-1].scatter_(2, x[:, 1:].unsqueeze(-1), leak)
            return logits
    with pytest.raises(RuntimeError, match="not causal"):
        prepare.evaluate_bpb(Peeking(tok.get_vocab_size()), tok, 8)


def test_a_model_causal_only_when_probed_with_one_row_is_refused(smoke_cache):
    """The probes have the shape of the real eval batches, so a model cannot behave only for them."""
    tok = prepare.Tokenizer.from_directory()

    class PeeksInBigBatches(UniformModel):
        def forward(self, x):
            logits = torch.zeros(*x.shape, self.vocab)
            if len(x) > 1:
                logits[:, :-1].scatter_(2, x[:, 1:].unsqueeze(-1), 30.0)
            return logits
    with pytest.raises(RuntimeError, match="not causal"):
        prepare.evaluate_bpb(PeeksInBigBatches(tok.get_vocab_size()), tok, 8)


def test_the_probed_batches_and_cut_points_differ_from_run_to_run(smoke_cache):
    tok = prepare.Tokenizer.from_directory()
    seen = []
    for _ in range(2):
        model = UniformModel(tok.get_vocab_size())
        prepare.evaluate_bpb(model, tok, 8)
        seen.append([args[0] for args, _ in model.calls])
    assert any(not torch.equal(a, b) for a, b in zip(*seen))  # same eval batches, other probes
