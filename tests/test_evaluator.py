"""The trusted evaluator's check of a handed-over program, before anything of it runs."""

import contextlib
import json
import os
import pickle
import zipfile

import pytest
import torch

import prepare
from autoresearch.evaluator import (Prepared, Rejected, batch_rows, block_sparse_attention, check_program,
                                    compiled, drop_dtype_checks, evaluate_program, graph_state, load_program,
                                    prepare_ahead, safe_expression, trial_rows)


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


# -- compiled ahead: the campaign's last program, while the experiment trains ------------------------
def saved(model, tmp_path, name, rows=64):
    """The path of the model exported as prepare.export_model does (a batch of 1 to `rows` rows), saved."""
    batch = torch.export.Dim("batch", min=1, max=rows)
    program = torch.export.export(model, (torch.randint(0, 10, (2, 256)),), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / name)
    return tmp_path / name


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


# -- a program file made by hand: torch.export.load would run code from it ----------------------------
class MakesFolder:
    """Unpickled, it makes a folder: proof that a pickle in the file ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.makedirs, (self.path,)


def forge_pickled_weight(files, ran):
    config = next(n for n in files if n.endswith("_weights_config.json"))
    entry = json.loads(files[config])
    for payload in entry["config"].values():
        payload["use_pickle"] = True
        files[config.replace(config.rsplit("/", 1)[1], payload["path_name"])] = pickle.dumps(MakesFolder(ran))
    files[config] = json.dumps(entry).encode()


def forge_shape_expression(files, ran):
    model = next(n for n in files if "/models/" in n)
    text = files[model].decode()
    start = text.index('"expr_str": "') + len('"expr_str": "')
    end = text.index('"', start)
    code = f"__import__('os').makedirs('{ran}') or {text[start:end]}"
    files[model] = (text[:start] + code + text[end:]).encode()


def forge_guard(files, ran):
    model = next(n for n in files if "/models/" in n)
    document = json.loads(files[model])
    document["guards_code"] = [f"__import__('os').makedirs('{ran}') is None"]
    files[model] = json.dumps(document).encode()


def forge_sample_inputs(files, ran):
    sample = next(n for n in files if "/sample_inputs/" in n)
    files[sample] = pickle.dumps(MakesFolder(ran))


def forge_input_name(files, ran):
    """The input's name, which FX writes into `def forward(self, x)`: a default argument runs at load."""
    model = next(n for n in files if "/models/" in n)
    files[model] = files[model].replace(b'"x"', json.dumps(f"x=__import__('os').makedirs('{ran}')").encode())


def forge_tensor_name(files, ran):
    """A weight's name, which FX writes into getattr(self.e, "...") unescaped."""
    name = json.dumps(f'w"+str(__import__("os").makedirs("{ran}"))+"')[1:-1].encode()
    for n in files:
        if n.endswith(".json"):
            files[n] = files[n].replace(b"e.weight", b"e." + name)


def forge_print(files, ran):
    """aten._print is in aten and changes nothing: it printed a reply line before the evaluator's own."""
    model = next(n for n in files if "/models/" in n)
    files[model] = files[model].replace(b"torch.ops.aten.embedding.default", b"torch.ops.aten._print.default")


@pytest.mark.parametrize("forge, refusal", [
    (forge_pickled_weight, "is pickled or an object"),
    (forge_shape_expression, "shape expression that is not one"),
    (forge_guard, "input guard that is not one"),
    (forge_sample_inputs, "sample inputs need a full unpickling"),
    (forge_input_name, "a name that is not one"),
    (forge_tensor_name, "names a tensor"),
    (forge_print, "aten._print"),
], ids=["pickled weight", "code as a shape expression", "code as an input guard", "pickled sample inputs",
        "code as the input's name", "code as a weight's name", "a print"])
def test_a_program_file_that_would_run_code_when_loaded_is_refused_before_it_runs(tmp_path, forge, refusal):
    """Each of these ran code in the evaluator when torch.export.load read the file (or when its module
    was made or run): the code could answer the harness for the metric."""
    files = archive_files(honest_archive(tmp_path))
    ran = str(tmp_path / "the-code-ran")
    forge(files, ran)
    with zipfile.ZipFile(tmp_path / "model.pt2", "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    with pytest.raises(Rejected, match=refusal):
        evaluate_program(str(tmp_path / "model.pt2"), 4, None, None)
    assert not os.path.exists(ran)
    assert load_program(str(tmp_path / "honest.pt2")).module(check_guards=False) is not None


def honest_archive(tmp_path):
    return saved(Windowed(), tmp_path, "honest.pt2")


def archive_files(path):
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def zip_parts(data):
    """(entries' data, central directory records, count) of a zip file's bytes."""
    import struct
    end = data.rfind(b"PK\x05\x06")
    count, size, offset = struct.unpack("<HII", data[end + 10:end + 20])
    directory, records, i = data[offset:offset + size], [], 0
    while i < len(directory):
        name, extra, comment = struct.unpack("<HHH", directory[i + 28:i + 34])
        records.append(bytearray(directory[i:i + 46 + name + extra + comment]))
        i += len(records[-1])
    return data[:offset], records, count


def two_faced_zip(seen_by_python, seen_by_torch):
    """One file, two archives: Python's zipfile finds the central directory just before the end record
    (and shifts its offsets to match), torch's reader trusts the offset the end record gives."""
    import struct
    good_data, good, count = zip_parts(seen_by_python)
    evil_data, evil, _ = zip_parts(seen_by_torch)
    gap = sum(map(len, good)) - sum(map(len, evil))  # equal sizes: a comment pads the shorter one
    short = evil if gap > 0 else good
    comment = struct.unpack("<H", short[-1][32:34])[0]
    short[-1][32:34] = struct.pack("<H", comment + abs(gap))
    short[-1] += b" " * abs(gap)
    for record in good:  # Python adds the bytes before the directory it found to these offsets
        offset = struct.unpack("<I", record[42:46])[0]
        record[42:46] = struct.pack("<I", len(evil_data) + offset - sum(map(len, evil)))
    body = evil_data + good_data + b"".join(evil) + b"".join(good)
    return body + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, sum(map(len, good)),
                              len(evil_data) + len(good_data), 0)


def test_a_file_that_is_one_archive_to_python_and_another_to_torch_is_loaded_as_checked(tmp_path):
    """What torch.export.load reads is the archive as checked, rebuilt: not the file's other face."""
    honest = honest_archive(tmp_path)
    files = archive_files(honest)
    ran = str(tmp_path / "the-code-ran")
    forge_pickled_weight(files, ran)
    with zipfile.ZipFile(tmp_path / "evil.pt2", "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    path = tmp_path / "model.pt2"
    path.write_bytes(two_faced_zip(honest.read_bytes(), (tmp_path / "evil.pt2").read_bytes()))
    config = next(name for name in files if name.endswith("_weights_config.json"))
    torch_sees = torch._C.PyTorchFileReader(str(path)).get_record(config.split("/", 1)[1])
    assert b'"use_pickle": true' in bytes(torch_sees) and b'"use_pickle": true' not in archive_files(path)[config]
    assert load_program(str(path)).module(check_guards=False) is not None
    assert not os.path.exists(ran)


def torch_shape_expressions():
    """Shape expressions as torch.export writes them (sympy's srepr), of the kinds export makes."""
    import sympy
    from sympy.printing.repr import srepr
    from torch.utils._sympy.functions import CleanDiv, FloorDiv, IntTrueDiv, ModularIndexing, PythonMod, ToFloat
    s, u = sympy.Symbol("s95", positive=True, integer=True), sympy.Symbol("u0", integer=True)
    return [srepr(e) for e in (s, 2048 * s, s + 1, s * s, -s, s - u, s ** 2, sympy.Rational(1, 2) * s,
                               FloorDiv(s, 2), sympy.Mod(s, 2), ModularIndexing(s, 1, 4), CleanDiv(s, 2),
                               PythonMod(s, 3), IntTrueDiv(s, 2), ToFloat(s), sympy.Float(1.5) * s,
                               sympy.Max(1, s), sympy.Min(s, 4), sympy.Eq(s, 2), sympy.Ne(s, 3), s < 5, s <= 5,
                               s > 1, s >= 1, sympy.And(s > 1, s < 9), sympy.Or(s > 1, u < 2), sympy.Not(s > 1),
                               sympy.true, sympy.sqrt(s))]


def test_the_shape_expressions_torch_writes_are_accepted():
    assert [text for text in torch_shape_expressions() if not safe_expression(text)] == []


def test_input_guards_about_sizes_are_accepted_and_nothing_else():
    guards = ["L['idx'].size()[0] <= 65536", "2 <= L['idx'].size()[0]", "L['idx'].stride()[0] == 2048",
              "L['z']['k'].size()[1] == 3"]
    assert all(safe_expression(g, guard=True) for g in guards)
    assert not any(safe_expression(g, guard=True) for g in ["L['x'].__class__", "L['x']['__class__']",
                                                             "L['x'].size(__import__('os'))[0]"])


@pytest.mark.parametrize("text", ["__import__('os').getcwd()", "Float('1', precision=__import__('os'))",
                                  "Symbol('s0', positive=__import__('os'))", "Integer(2).__class__",
                                  "Symbol('__import__')", "Float(chr(49))", "Mul(s0, open)", "(lambda: 1)()"])
def test_code_written_as_a_shape_expression_is_not_one(text):
    assert not safe_expression(text)
