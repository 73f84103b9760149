"""The prepared token arrays and the loader that packs them: the same rows as the tokenize-at-run-time
loader it replaced, stored validation rows, fingerprints, file checks, and clear errors."""

import bisect
import json
import os
import shutil

import numpy as np
import pytest
import torch

import prepare
from autoresearch.runner import RunError, data_fingerprint


# --- the oracle: the loader as it was before the token arrays (prepare.py of 2026-11-26) -------

def old_token_documents(tokenizer, split, loop):
    entries, bos, epoch = prepare._manifest(split), tokenizer.get_bos_token_id(), 1
    while True:
        n = 0
        for texts in prepare.iter_texts(entries):
            for ids in tokenizer.encode(texts, prepend=bos):
                n += 1
                yield ids, epoch
        if n == 0:
            raise ValueError(f"the {split} split has no documents")
        if not loop:
            return
        epoch += 1


def old_pack_rows(documents, row_len, bos, buffer_size=1000):
    lengths, buffer = [], []
    def add(doc):
        i = bisect.bisect_right(lengths, len(doc))
        lengths.insert(i, len(doc))
        buffer.insert(i, doc)
    epoch, exhausted = 1, False
    while True:
        row = []
        while len(row) < row_len:
            while not exhausted and len(buffer) < buffer_size:
                try:
                    doc, epoch = next(documents)
                    add(doc)
                except StopIteration:
                    exhausted = True
            if not buffer:
                return
            room = row_len - len(row)
            i = bisect.bisect_right(lengths, room) - 1
            if i >= 0:
                lengths.pop(i)
                row.extend(buffer.pop(i))
            else:
                lengths.pop(0)
                doc = buffer.pop(0)
                row.extend(doc[:room])
                if len(doc) > room:
                    add([bos] + doc[room:])
        yield row, epoch


def old_dataloader(tokenizer, B, T, split, buffer_size=1000):
    """Yields (rows (B, T + 1) int64, epoch) as the old make_dataloader built them, before the device copy."""
    rows = old_pack_rows(old_token_documents(tokenizer, split, loop=True), T + 1, tokenizer.get_bos_token_id(),
                         buffer_size)
    while True:
        batch, epoch = [], 1
        for _ in range(B):
            row, epoch = next(rows)
            batch.append(row)
        yield torch.tensor(batch, dtype=torch.int64), epoch


def old_val_rows(tokenizer):
    n = prepare.EVAL_TOKENS // prepare.MAX_SEQ_LEN
    rows = old_pack_rows(old_token_documents(tokenizer, "val", loop=True), prepare.MAX_SEQ_LEN + 1,
                         tokenizer.get_bos_token_id())
    return torch.tensor([next(rows)[0] for _ in range(n)], dtype=torch.int64)


# --- the rows: the same as before ------------------------------------------------------------

@pytest.mark.parametrize("buffer_size", [5, 1000])
def test_train_rows_are_identical_to_the_old_loader_over_several_epochs(smoke_cache, buffer_size):
    tok = prepare.Tokenizer.from_directory()
    B, T = 256, prepare.MAX_SEQ_LEN
    new = prepare.make_dataloader(tok, B, T, "train", device="cpu", buffer_size=buffer_size)
    old = old_dataloader(tok, B, T, "train", buffer_size=buffer_size)
    epoch, batches = 1, 0
    while epoch < 3:
        x, y, epoch = next(new)
        rows, old_epoch = next(old)
        assert epoch == old_epoch and torch.equal(x, rows[:, :-1]) and torch.equal(y, rows[:, 1:]), batches
        assert x.dtype == y.dtype == torch.int64
        batches += 1
    assert batches > 2  # the smoke split is several batches long, so the epoch boundaries were crossed inside


def synthetic_arrays(n=200, seed=0, bos=0):
    rng = np.random.default_rng(seed)
    docs = [[bos] + list(rng.integers(1, 50, rng.integers(1, 150))) for _ in range(n)]
    tokens = np.array([t for d in docs for t in d], dtype=np.uint16)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    return docs, tokens, offsets


@pytest.mark.parametrize("buffer_size, row_len", [(1, 65), (2, 65), (7, 33), (50, 65), (1000, 129), (30, 3)])
def test_pack_token_rows_packs_as_pack_rows(buffer_size, row_len):
    docs, tokens, offsets = synthetic_arrays()
    def looped():
        for epoch in range(1, 100):
            yield from ((d, epoch) for d in docs)
    old = prepare.pack_rows(looped(), row_len, 0, buffer_size)
    new = prepare.pack_token_rows(tokens, offsets, 3, row_len, 0, buffer_size)
    epoch = 1
    while epoch < 3:
        rows, epoch = next(new)
        want = [next(old) for _ in range(3)]
        assert rows.dtype == np.int64 and rows.shape == (3, row_len)
        assert rows.tolist() == [r for r, _ in want] and epoch == want[-1][1]


def test_token_files_are_plain_npy_arrays(smoke_cache):
    folder = os.path.join(smoke_cache, "smoke")
    tokens = np.load(os.path.join(folder, "train_tokens.npy"), mmap_mode="r", allow_pickle=False)
    offsets = np.load(os.path.join(folder, "train_offsets.npy"), mmap_mode="r", allow_pickle=False)
    tok = prepare.Tokenizer.from_directory()
    assert tokens.dtype == np.uint16 and tokens.ndim == 1 and offsets.dtype == np.int64
    assert offsets[0] == 0 and offsets[-1] == len(tokens) and (np.diff(offsets) >= 2).all()
    assert (tokens[offsets[:-1]] == tok.get_bos_token_id()).all()
    first = next(old_token_documents(tok, "train", loop=False))[0]
    assert tokens[offsets[0]:offsets[1]].tolist() == first


def test_val_rows_are_bit_identical_to_the_old_val_rows(smoke_cache):
    tok = prepare.Tokenizer.from_directory()
    stored = np.load(os.path.join(smoke_cache, "smoke", "val_rows.npy"), allow_pickle=False)
    assert stored.dtype == np.uint16
    assert stored.shape == (prepare.EVAL_TOKENS // prepare.MAX_SEQ_LEN, prepare.MAX_SEQ_LEN + 1)
    rows = prepare._val_rows(tok)
    assert rows.dtype == torch.int64 and torch.equal(rows, old_val_rows(tok))


def test_val_split_cycles_the_stored_rows_and_counts_epochs(smoke_cache):
    tok = prepare.Tokenizer.from_directory()
    rows = prepare._val_rows(tok)
    n = len(rows)
    loader = prepare.make_dataloader(tok, 24, prepare.MAX_SEQ_LEN, "val", device="cpu")
    seen, epochs = [], []
    while len(seen) < 3 * n:
        x, y, epoch = next(loader)
        assert torch.equal(x[:, 1:], y[:, :-1])
        seen += torch.cat([x, y[:, -1:]], 1).unbind(0)
        epochs.append(epoch)
    assert all(torch.equal(seen[i], rows[i % n]) for i in range(len(seen)))
    assert epochs[0] == 1 and epochs == sorted(epochs) and epochs[-1] >= 3


# --- fingerprints and file checks --------------------------------------------------------------

def test_fingerprint_is_stable_across_prepares_of_the_same_data_and_changes_with_it(tmp_path):
    from test_prepare import write_local_corpus  # here, so bench/loader.py can import the oracle alone
    corpus = tmp_path / "corpus"
    write_local_corpus(corpus)
    first = prepare.prepare("smoke", f"files:{corpus}", cache_dir=str(tmp_path / "a"))
    again = prepare.prepare("smoke", f"files:{corpus}", cache_dir=str(tmp_path / "b"))
    manifest = json.load(open(os.path.join(first, "manifest.json")))
    assert set(manifest["files"]) == {"tokenizer.json", "train_tokens.npy", "train_offsets.npy", "val_rows.npy",
                                      "data/train.parquet", "data/val.parquet"}
    assert "prepared_at" in manifest
    # the harness's fingerprint of a profile (runner.data_fingerprint) reads what prepare.py wrote
    assert data_fingerprint("smoke", first) == data_fingerprint("smoke", again)
    (corpus / "a.txt").write_text("A different first document. " * 40)
    changed = prepare.prepare("smoke", f"files:{corpus}", cache_dir=str(tmp_path / "a"))
    assert data_fingerprint("smoke", changed) != data_fingerprint("smoke", again)


def test_a_changed_or_missing_data_file_is_found_against_the_manifest(tmp_path, smoke_cache):
    folder = tmp_path / "smoke"
    shutil.copytree(os.path.join(smoke_cache, "smoke"), folder)
    assert data_fingerprint("smoke", str(folder))
    with open(folder / "val_rows.npy", "r+b") as f:
        f.seek(200)
        f.write(b"\x01\x00")
    with pytest.raises(RunError, match="val_rows.npy does not match its sha256"):
        data_fingerprint("smoke", str(folder))
    os.remove(folder / "train_offsets.npy")
    with pytest.raises(RunError, match="train_offsets.npy is missing"):
        data_fingerprint("smoke", str(folder))


# --- clear errors --------------------------------------------------------------------------

@pytest.fixture
def profile_copy(tmp_path, smoke_cache, monkeypatch):
    """A copy of the prepared smoke profile that the loader reads instead; tests may break it."""
    folder = tmp_path / "smoke"
    shutil.copytree(os.path.join(smoke_cache, "smoke"), folder)
    monkeypatch.setattr(prepare, "PROFILE_DIR", str(folder))
    monkeypatch.setattr(prepare, "_VAL_ROWS", None)
    return folder


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_profile_from_an_older_prepare_is_one_line_saying_what_to_run(profile_copy, split):
    for name in ["train_tokens.npy", "train_offsets.npy", "val_rows.npy"]:
        os.remove(profile_copy / name)
    tok = prepare.Tokenizer.from_directory()
    with pytest.raises(SystemExit) as e:
        prepare.make_dataloader(tok, 2, prepare.MAX_SEQ_LEN, split, device="cpu")
    assert str(e.value) == ("error: profile smoke was prepared by an older prepare.py; "
                            "run: python prepare.py --profile smoke")


def test_a_hidden_validation_split_is_one_clear_error(profile_copy):
    os.remove(profile_copy / "val_rows.npy")
    tok = prepare.Tokenizer.from_directory()
    with pytest.raises(FileNotFoundError, match="^the validation split is not available here$"):
        prepare.make_dataloader(tok, 2, prepare.MAX_SEQ_LEN, "val", device="cpu")
    with pytest.raises(FileNotFoundError, match="^the validation split is not available here$"):
        prepare._val_rows(tok)
    x, _, _ = next(prepare.make_dataloader(tok, 2, prepare.MAX_SEQ_LEN, "train", device="cpu"))
    assert x.shape == (2, prepare.MAX_SEQ_LEN)  # training needs no validation data


def test_an_exception_in_the_packing_thread_surfaces_in_the_training_thread(smoke_cache, monkeypatch):
    class Boom(Exception):
        pass

    def failing(tokens, offsets, B, row_len, bos, buffer_size):
        yield np.zeros((B, row_len), np.int64), 1
        raise Boom("packing failed")
    monkeypatch.setattr(prepare, "pack_token_rows", failing)
    tok = prepare.Tokenizer.from_directory()
    loader = prepare.make_dataloader(tok, 2, 16, "train", device="cpu")
    assert next(loader)[0].shape == (2, 16)
    with pytest.raises(Boom, match="packing failed"):
        next(loader)


def test_the_packing_thread_stops_when_the_loader_is_closed(smoke_cache):
    import threading
    import time
    tok = prepare.Tokenizer.from_directory()
    loader = prepare.make_dataloader(tok, 2, 16, "train", device="cpu")
    next(loader)
    assert any(t.name == "autoresearch-loader" for t in threading.enumerate())
    loader.close()
    deadline = time.time() + 5
    while any(t.name == "autoresearch-loader" for t in threading.enumerate()) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "autoresearch-loader" for t in threading.enumerate())
