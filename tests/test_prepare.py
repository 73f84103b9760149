"""prepare.py: sources, the tokenizer, the packing data loader, atomic caches, bad input."""

import http.server
import json
import os
import random
import shutil
import subprocess
import sys
import threading
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import prepare
from conftest import ROOT

MULTILINGUAL = "Hello, world! Grüße aus Köln. Ελληνικά, русский, 日本語のテキスト, 한국어, العربية 🙂🚀 naïve café 1234567"


# --- tokenizer -------------------------------------------------------------------------------

def test_tokenizer_round_trips_multilingual_text(smoke_cache):
    tok = prepare.Tokenizer.from_directory()
    assert tok.decode(tok.encode(MULTILINGUAL)) == MULTILINGUAL


def test_token_bytes_sum_to_the_utf8_length_of_any_text(smoke_cache):
    # partial UTF-8 tokens must count their raw bytes (the reference counted them as 3)
    tok = prepare.Tokenizer.from_directory()
    token_bytes = prepare.get_token_bytes()
    for text in [MULTILINGUAL, "日本語" * 50, "\u00e9\u0301" * 9, " \n\t  x"]:
        assert int(token_bytes[tok.encode(text)].sum()) == len(text.encode("utf-8"))


def test_special_tokens_have_zero_bytes_and_bos_is_reserved_0(smoke_cache):
    tok = prepare.Tokenizer.from_directory()
    token_bytes = prepare.get_token_bytes()
    assert tok.get_vocab_size() == 1024
    assert tok.get_bos_token_id() == tok.enc.encode_single_token("<|reserved_0|>")
    specials = [tok.enc.encode_single_token(f"<|reserved_{i}|>") for i in range(4)]
    assert token_bytes[specials].tolist() == [0, 0, 0, 0]
    assert (token_bytes[[i for i in range(1024) if i not in specials]] > 0).all()


def test_tokenizer_is_stored_as_plain_json(smoke_cache):
    folder = os.path.join(smoke_cache, "smoke")
    assert sorted(os.listdir(folder)) == ["data", "manifest.json", "tokenizer.json", "train_offsets.npy",
                                          "train_tokens.npy", "val_rows.npy"]
    data = json.load(open(os.path.join(folder, "tokenizer.json")))
    assert len(data["ranks"]) == 1020 and data["special_tokens"][0] == "<|reserved_0|>"


# --- packing ---------------------------------------------------------------------------------

BOS = 0


def synthetic_docs(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    docs = []
    for i in range(n):
        length = int(torch.randint(2, 90, (1,), generator=g))
        docs.append([BOS] + [1 + (i * 7 + j) % 50 for j in range(length)])
    return docs


def test_packed_rows_are_full_and_start_with_bos():
    docs = synthetic_docs()
    rows = [row for row, _ in prepare.pack_rows(iter((d, 1) for d in docs), 65, BOS, buffer_size=50)]
    assert rows and all(len(r) == 65 and r[0] == BOS for r in rows)


def test_packing_throws_no_text_away():
    # a cropped document's remainder goes back to the buffer; only the very end can be left over
    docs = synthetic_docs()
    rows = [row for row, _ in prepare.pack_rows(iter((d, 1) for d in docs), 65, BOS, buffer_size=50)]
    text_in = Counter(t for d in docs for t in d if t != BOS)
    text_out = Counter(t for r in rows for t in r if t != BOS)
    leftover = sum((text_in - text_out).values())
    assert not (text_out - text_in)
    assert leftover < 65


def test_dataloader_targets_are_inputs_shifted_by_one(smoke_cache):
    tok = prepare.Tokenizer.from_directory()
    loader = prepare.make_dataloader(tok, 4, 128, "train", device="cpu")
    for _ in range(3):
        x, y, epoch = next(loader)
        assert x.shape == y.shape == (4, 128) and x.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        assert (x[:, 0] == tok.get_bos_token_id()).all()
        assert epoch == 1


def test_train_split_loops_over_epochs(smoke_cache):
    tok = prepare.Tokenizer.from_directory()
    n_tokens = len(prepare._train_arrays()[0])
    loader = prepare.make_dataloader(tok, 64, 128, "train", device="cpu", buffer_size=4)
    epochs = [next(loader)[2] for _ in range(2 * n_tokens // (64 * 129) + 2)]
    assert epochs[0] == 1 and max(epochs) >= 2 and epochs == sorted(epochs)


def test_validation_stream_is_deterministic(smoke_cache):
    tok = prepare.Tokenizer.from_directory()
    a = prepare.make_dataloader(tok, 8, 128, "val", device="cpu")
    b = prepare.make_dataloader(tok, 8, 128, "val", device="cpu")
    for _ in range(3):
        assert torch.equal(next(a)[0], next(b)[0])


# --- sources ---------------------------------------------------------------------------------

def test_sotu_validation_is_the_most_recent_tenth_of_speeches(smoke_cache):
    folder = os.path.join(smoke_cache, "smoke", "data")
    val = pq.read_table(os.path.join(folder, "val.parquet")).column("text").to_pylist()
    train = pq.read_table(os.path.join(folder, "train.parquet")).column("text").to_pylist()
    speeches = os.path.join(prepare._sotu_folder(), "speeches")
    newest = sorted(os.listdir(speeches))[-1]
    first_paragraph = open(os.path.join(speeches, newest)).read().strip().split("\n\n")[0].strip()
    oldest = open(os.path.join(speeches, "1790-Washington-1.txt")).read().strip().split("\n\n")[0].strip()
    assert any(first_paragraph[:200] in d for d in val) and not any(first_paragraph[:200] in d for d in train)
    assert any(oldest[:200] in d for d in train)
    assert len(val) < len(train) / 5


def test_long_paragraphs_are_cut_at_sentence_ends():
    text = "Short one.\n\n" + " ".join(f"Sentence number {i} is here." for i in range(200))
    docs = prepare.split_paragraphs(text)
    assert docs[0] == "Short one."
    assert all(len(d) <= prepare.MAX_DOC_CHARS for d in docs)
    assert all(d.endswith(".") for d in docs)
    assert " ".join(docs[1:]) == text.split("\n\n")[1]


def write_local_corpus(folder):
    folder.mkdir()
    (folder / "a.txt").write_text("The first plain text document. " * 40)
    (folder / "b.md").write_text("# Notes\n\nMarkdown is text too.\n\n\n  \nA second paragraph\n    of two lines.\n")
    (folder / "c.jsonl").write_text("\n".join(json.dumps({"text": f"Record {i} of a json lines file. " * 10})
                                              for i in range(20)) + "\n")
    pq.write_table(pa.table({"text": [f"Parquet row {i}, some words." * 8 for i in range(20)]}), folder / "d.parquet")


def test_files_source_reads_txt_md_jsonl_and_parquet(tmp_path):
    write_local_corpus(tmp_path / "corpus")
    final = prepare.prepare("smoke", f"files:{tmp_path / 'corpus'}", cache_dir=str(tmp_path / "cache"))
    manifest = json.load(open(os.path.join(final, "manifest.json")))
    texts = lambda split: [t for b in prepare.iter_texts(manifest[split], final) for t in b]
    train, val = texts("train"), texts("val")
    assert len(train) + len(val) == 44 and len(val) == 5
    assert any("plain text document" in t for t in train + val)
    assert manifest["source"].startswith("files:")


def prepared_texts(final):
    manifest = json.load(open(os.path.join(final, "manifest.json")))
    return [[t for b in prepare.iter_texts(manifest[split], final) for t in b] for split in ("train", "val")]


def test_text_files_are_split_into_documents_at_blank_lines():
    text = "\n  \nTitle\n\nOne line,\n    an indented one.\n\n\n \t \n\nLast paragraph.  \n"
    assert prepare.split_at_blank_lines(text) == ["Title", "One line,\n    an indented one.", "Last paragraph."]
    assert prepare.split_at_blank_lines("Windows\r\n\r\nlines\r\n") == ["Windows", "lines"]


def test_a_single_text_file_is_a_corpus_of_its_paragraphs(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    paragraphs = [f"Paragraph {i} of one long book. " * 5 for i in range(100)]
    (corpus / "book.txt").write_text("\n\n".join(paragraphs))
    train, val = prepared_texts(prepare.prepare("smoke", f"files:{corpus}", cache_dir=str(tmp_path / "cache")))
    assert sorted(train + val) == sorted(p.strip() for p in paragraphs)
    assert val == [p.strip() for p in paragraphs[-10:]]


def test_files_source_validates_on_the_last_tenth_of_documents_not_whole_files(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("a.md", "b.md"):
        (corpus / name).write_text("\n\n".join(f"{name} paragraph {i}, some words." for i in range(10)))
    train, val = prepared_texts(prepare.prepare("smoke", f"files:{corpus}", cache_dir=str(tmp_path / "cache")))
    assert val == ["b.md paragraph 8, some words.", "b.md paragraph 9, some words."]
    assert len(train) == 18


def snapshot(folder):
    """Every file under folder with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name, data, problem", [
    ("random.txt", random.Random(0).randbytes(4096), "not UTF-8"),
    ("latin1.md", "Caf\u00e9 cr\u00e8me\n\nSecond paragraph.\n".encode("latin-1"), "byte 0xe9 at offset 3"),
    ("binary.txt", b"looks like text\n\n\x00\x00\x01\x02 until it does not\n", "NUL byte at offset 17"),
    ("records.jsonl", b'{"text": "fine"}\n{"text": "na\xefve"}\n', "byte 0xef at offset 29"),
], ids=["random-bytes", "latin-1", "nul-bytes", "latin-1-jsonl"])
def test_files_that_are_not_utf8_text_are_refused_and_the_prepared_profile_is_kept(tmp_path, smoke_cache, name,
                                                                                   data, problem):
    cache = tmp_path / "cache"
    shutil.copytree(os.path.join(smoke_cache, "smoke"), cache / "smoke")
    (cache / "last_profile").write_text("smoke\n")
    before = snapshot(cache)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "fine.txt").write_text("A good first document.\n\nAnd a second one.\n")
    (corpus / name).write_bytes(data)
    r = run_prepare("--profile", "smoke", "--source", f"files:{corpus}", cache=cache)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {corpus / name} is not UTF-8 text") and problem in line
    assert snapshot(cache) == before  # byte-identical, and no half-written folder beside it


@pytest.mark.parametrize("content, message", [
    (None, "no .txt, .md, .jsonl or .parquet files match"),
    ({"only.txt": "just one document"}, "at least 2 are needed"),
    ({"empty.txt": "", "blank.md": "   \n"}, "0 non-empty document"),
    ({"bad.jsonl": "{\"text\": \"ok\"}\nnot json\n"}, "bad.jsonl:2"),
])
def test_files_source_bad_input_is_one_clear_error(tmp_path, content, message):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, text in (content or {}).items():
        (corpus / name).write_text(text)
    with pytest.raises(prepare.PrepareError, match=message):
        prepare.prepare("smoke", f"files:{corpus}", cache_dir=str(tmp_path / "cache"))
    assert not os.path.exists(tmp_path / "cache" / "smoke")
    assert os.listdir(tmp_path / "cache") == []  # no temp folder left behind


# --- downloads, against a local HTTP server --------------------------------------------------

class ShardServer:
    """Serves files from a folder on 127.0.0.1; `truncate` maps a file name to how many requests
    get a truncated body (with a matching Content-Length, so only the parquet check can tell)."""

    def __init__(self, folder):
        self.folder, self.truncate, self.requests = folder, {}, Counter()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                server.requests[name] += 1
                path = os.path.join(server.folder, name)
                if not os.path.exists(path):
                    self.send_error(404)
                    return
                body = open(path, "rb").read()
                if server.truncate.get(name, 0) > 0:
                    server.truncate[name] -= 1
                    body = body[: len(body) // 2]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def shard_server(tmp_path, monkeypatch):
    folder = tmp_path / "served"
    folder.mkdir()
    server = ShardServer(str(folder))
    monkeypatch.setattr(prepare, "DOWNLOAD_BACKOFF", 0.01)
    yield server
    server.close()


def write_shard(path, rows, start=0):
    pq.write_table(pa.table({"text": [f"Story number {start + i}: a small tale about a cat and a dog." * 3
                                      for i in range(rows)]}), path, row_group_size=500)


def test_climbmix_downloads_shards_and_pins_the_last_as_validation(tmp_path, shard_server, monkeypatch):
    for i in (0, 1, 6542):
        write_shard(os.path.join(shard_server.folder, f"shard_{i:05d}.parquet"), 200, start=i)
    monkeypatch.setenv("AUTORESEARCH_CLIMBMIX_URL", shard_server.url)
    final = prepare.prepare("smoke", "climbmix", num_shards=2, workers=3, cache_dir=str(tmp_path / "cache"))
    manifest = json.load(open(os.path.join(final, "manifest.json")))
    assert [os.path.basename(e["path"]) for e in manifest["train"]] == ["shard_00000.parquet", "shard_00001.parquet"]
    assert [os.path.basename(e["path"]) for e in manifest["val"]] == ["shard_06542.parquet"]
    assert not any(".part" in f for f in os.listdir(tmp_path / "cache" / "downloads" / "climbmix"))


def test_a_truncated_download_is_detected_and_retried(tmp_path, shard_server, monkeypatch):
    for i in (0, 6542):
        write_shard(os.path.join(shard_server.folder, f"shard_{i:05d}.parquet"), 200)
    shard_server.truncate["shard_00000.parquet"] = 2
    monkeypatch.setenv("AUTORESEARCH_CLIMBMIX_URL", shard_server.url)
    prepare.prepare("smoke", "climbmix", num_shards=1, cache_dir=str(tmp_path / "cache"))
    assert shard_server.requests["shard_00000.parquet"] == 3
    assert prepare._is_complete_parquet(str(tmp_path / "cache" / "downloads" / "climbmix" / "shard_00000.parquet"))


def test_a_shard_that_stays_truncated_fails_cleanly_and_keeps_the_others(tmp_path, shard_server, monkeypatch):
    for i in (0, 1, 6542):
        write_shard(os.path.join(shard_server.folder, f"shard_{i:05d}.parquet"), 200)
    shard_server.truncate["shard_00001.parquet"] = 99
    monkeypatch.setenv("AUTORESEARCH_CLIMBMIX_URL", shard_server.url)
    with pytest.raises(prepare.PrepareError, match="after 5 attempts"):
        prepare.prepare("smoke", "climbmix", num_shards=2, cache_dir=str(tmp_path / "cache"))
    downloads = sorted(os.listdir(tmp_path / "cache" / "downloads" / "climbmix"))
    assert downloads == ["shard_00000.parquet", "shard_06542.parquet"]  # finished ones kept, no partial file
    assert not os.path.exists(tmp_path / "cache" / "smoke")
    # a second run resumes: only the missing shard is fetched again
    shard_server.truncate.clear()
    before = shard_server.requests["shard_00000.parquet"]
    prepare.prepare("smoke", "climbmix", num_shards=2, cache_dir=str(tmp_path / "cache"))
    assert shard_server.requests["shard_00000.parquet"] == before


def test_tinystories_splits_rows_as_the_dataset_card_says(tmp_path, shard_server, monkeypatch):
    write_shard(os.path.join(shard_server.folder, "0000.parquet"), 21_000)
    write_shard(os.path.join(shard_server.folder, "0001.parquet"), 500, start=21_000)
    monkeypatch.setenv("AUTORESEARCH_TINYSTORIES_URL", shard_server.url)
    final = prepare.prepare("smoke", "tinystories", cache_dir=str(tmp_path / "cache"))
    manifest = json.load(open(os.path.join(final, "manifest.json")))
    val = [t for b in prepare.iter_texts(manifest["val"], final) for t in b]
    train = [t for b in prepare.iter_texts(manifest["train"], final) for t in b]
    assert len(val) == 10_000 and val[0].startswith("Story number 10000:")
    assert len(train) == 1_500 and train[0].startswith("Story number 20000:")
    assert shard_server.requests["0002.parquet"] == 1  # asked once, 404: the end


# --- atomic caches and bad input ---------------------------------------------------------------

def test_interrupted_prepare_keeps_the_previous_cache_and_leaves_no_partial_one(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    write_local_corpus(tmp_path / "corpus")
    first = prepare.prepare("smoke", f"files:{tmp_path / 'corpus'}", cache_dir=str(cache))
    before = open(os.path.join(first, "manifest.json")).read()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(prepare, "train_tokenizer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare("smoke", "sotu", cache_dir=str(cache))
    assert open(os.path.join(first, "manifest.json")).read() == before
    assert sorted(os.listdir(cache)) == ["last_profile", "smoke"]


def run_prepare(*args, cache):
    env = dict(os.environ, AUTORESEARCH_CACHE=str(cache))
    env.pop("AUTORESEARCH_PROFILE")
    return subprocess.run([sys.executable, str(ROOT / "prepare.py"), *args], env=env, capture_output=True, text=True)


def test_prepare_cli_rejects_an_unknown_source_in_one_line(tmp_path):
    r = run_prepare("--profile", "smoke", "--source", "wikipedia", cache=tmp_path)
    assert r.returncode != 0 and "unknown source 'wikipedia'" in r.stderr and "Traceback" not in r.stderr


def test_prepare_cli_rejects_an_unknown_profile_in_one_line(tmp_path):
    r = run_prepare("--profile", "tiny", cache=tmp_path)
    assert r.returncode != 0 and "unknown profile 'tiny'" in r.stderr and "Traceback" not in r.stderr


def test_train_without_prepared_data_says_what_to_run(tmp_path):
    env = dict(os.environ, AUTORESEARCH_CACHE=str(tmp_path), AUTORESEARCH_PROFILE="smoke")
    r = subprocess.run([sys.executable, str(ROOT / "train.py")], env=env, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0
    assert "python prepare.py --profile smoke" in r.stderr and "Traceback" not in r.stderr
    assert "val_bpb" not in r.stdout
