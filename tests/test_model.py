"""train.py's model and optimizer, loaded without running the training script."""

import pytest
import torch

from trainpy import load_definitions

D = load_definitions()


def small_config(**overrides):
    config = dict(sequence_len=32, vocab_size=97, n_layer=4, n_head=2, n_kv_head=2, n_embd=32, window_pattern="SSSL")
    config.update(overrides)
    return D["GPTConfig"](**config)


def random_model(**overrides):
    """A model whose every weight is non-zero (the reference init zeroes the output projections)."""
    torch.manual_seed(0)
    model = D["GPT"](small_config(**overrides))
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def test_future_tokens_cannot_change_past_logits():
    model = random_model()
    x = torch.randint(0, 97, (2, 32))
    t = 20
    changed = x.clone()
    changed[:, t:] = torch.randint(0, 97, (2, 32 - t))
    with torch.no_grad():
        a, b = model(x), model(changed)
    assert torch.allclose(a[:, :t], b[:, :t], atol=1e-5)
    assert not torch.allclose(a[:, t:], b[:, t:], atol=1e-5)


def test_window_pattern_cycles_and_the_last_layer_sees_everything():
    sizes = D["GPT"].window_sizes
    assert sizes(small_config(n_layer=8, sequence_len=2048)) == [1024, 1024, 1024, 2048] * 2
    assert sizes(small_config(n_layer=3, window_pattern="S")) == [16, 16, 32]
    assert sizes(small_config(n_layer=4, window_pattern="L")) == [32] * 4


def test_short_window_attends_only_to_recent_tokens():
    D["make_attention_masks"](32, [8, 32], "cpu")
    q, k, v = (torch.randn(1, 32, 2, 16) for _ in range(3))
    far = v.clone()
    far[:, :10] = torch.randn(1, 10, 2, 16)  # tokens 0-9 are more than 8 positions before token 20
    local = D["attention"](q, k, v, 8)
    assert torch.allclose(local[:, 20:], D["attention"](q, k, far, 8)[:, 20:], atol=1e-6)
    assert not torch.allclose(D["attention"](q, k, v, 32)[:, 20:], D["attention"](q, k, far, 32)[:, 20:], atol=1e-6)


def test_value_embeddings_are_on_alternating_layers_including_the_last():
    has = D["has_value_embedding"]
    assert [i for i in range(8) if has(i, 8)] == [1, 3, 5, 7]
    assert [i for i in range(5) if has(i, 5)] == [0, 2, 4]


def test_reference_initialisation():
    torch.manual_seed(0)
    model = D["GPT"](small_config(n_embd=256, n_head=2, n_kv_head=2, vocab_size=2048))
    model.init_weights()
    assert abs(model.wte.weight.std().item() - 1.0) < 0.02
    assert abs(model.lm_head.weight.std().item() - 0.001) < 0.0001
    bound = 3 ** 0.5 * 256 ** -0.5
    for block in model.blocks:
        assert block.attn.c_proj.weight.abs().max() == 0 and block.mlp.c_proj.weight.abs().max() == 0
        assert block.attn.c_q.weight.abs().max() <= bound
    assert all(b.attn.ve_gate.weight.abs().max() == 0 for b in model.blocks if b.attn.ve_gate is not None)
    assert model.resid_lambdas.tolist() == [1.0] * 4 and model.x0_lambdas[0].item() == pytest.approx(0.1)


def test_reference_model_has_about_50_million_parameters():
    config = D["GPTConfig"](sequence_len=2048, vocab_size=8192, n_layer=8, n_head=4, n_kv_head=4, n_embd=512,
                            window_pattern="SSSL")
    with torch.device("meta"):
        model = D["GPT"](config)
    assert round(model.num_params() / 1e6, 1) == 50.3


def test_logits_are_soft_capped_at_15():
    model = random_model()
    with torch.no_grad():
        model.lm_head.weight.mul_(1000)
        logits = model(torch.randint(0, 97, (1, 32)))
    assert logits.abs().max() <= 15 and logits.dtype == torch.float32


@pytest.mark.parametrize("shape", [(3, 128, 512), (2, 512, 128), (4, 96, 96)])
def test_polar_express_makes_singular_values_near_one(shape):
    torch.manual_seed(0)
    s = torch.linalg.svdvals(D["polar_express"](torch.randn(*shape)))
    if shape[1] == shape[2]:  # square random matrices have a few tiny singular values; the bulk must be ~1
        s = s.flatten().sort().values[len(s.flatten()) // 10:]
    assert s.min() > 0.7 and s.max() < 1.2


def test_optimizer_lowers_the_loss_and_steps_every_parameter():
    torch.manual_seed(0)
    model = D["GPT"](small_config())
    model.init_weights()
    optimizer = D["build_optimizer"](model)
    kinds = [g["kind"] for g in optimizer.param_groups]
    assert kinds.count("adamw") == 5 and kinds.count("muon") >= 2
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    x = torch.randint(0, 97, (4, 32))
    y = torch.roll(x, -1, 1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = []
    for _ in range(15):
        loss = model(x, y)
        loss.backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())


def test_cautious_weight_decay_only_shrinks_where_update_and_weight_agree():
    # a rank-1 gradient orthogonalises to the same sign pattern: column 0 agrees with the weights, column 1 not
    p = torch.ones(1, 2, 2)
    grads = torch.tensor([[[1.0, -1.0], [1.0, -1.0]]])
    lr, wd = 0.1, 0.5
    D["muon_step"](p, grads, torch.zeros_like(grads), torch.zeros(1, 2, 1), lr, 0.95, wd)
    step = 1 - p[0, :, 0]      # update + decay
    growth = p[0, :, 1] - 1    # update only
    assert torch.all(growth > 0)
    assert torch.allclose(step - growth, torch.full((2,), lr * wd), atol=1e-5)
