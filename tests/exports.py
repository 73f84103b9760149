"""Small models and the ways the tests export them, as train.py's hand-off does (prepare.export_model)."""

import torch


def exported(module, tmp_path):
    """The module as the evaluator receives it: exported, saved, loaded back."""
    program = torch.export.export(module, (torch.randint(0, 10, (2, 5)),))
    torch.export.save(program, tmp_path / "model.pt2")
    return torch.export.load(tmp_path / "model.pt2")


class Embed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.e = torch.nn.Embedding(10, 10)


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


def saved(model, tmp_path, name, rows=64):
    """The path of the model exported as prepare.export_model does (a batch of 1 to `rows` rows), saved."""
    batch = torch.export.Dim("batch", min=1, max=rows)
    program = torch.export.export(model, (torch.randint(0, 10, (2, 256)),), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / name)
    return tmp_path / name
