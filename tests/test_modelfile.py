"""The model file an experiment hands over: what it may hold, checked before anything of it runs."""

import json
import os
import pickle
import zipfile

import pytest
import torch

from autoresearch.modelfile import Rejected, check_program, load_program, module_of, safe_expression
from exports import Embed, Windowed, exported, saved


def saved_and_loaded(model, tmp_path):
    return load_program(saved(model, tmp_path, "model.pt2"))


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


class ReadsItsInput(Embed):
    """Takes a number out of its input tokens: .item() (a check on it would fail with a message naming
    the token), or nonzero (a size that depends on them)."""

    def __init__(self, how):
        super().__init__()
        self.how = how

    def forward(self, x):
        if self.how == "item":
            return self.e(x) * x[0, 1].item()
        return self.e(x) * torch.nonzero(x == 3).shape[0]


@pytest.mark.parametrize("how", ["item", "nonzero"])
def test_a_model_that_reads_a_number_out_of_its_input_is_rejected(how, tmp_path):
    with pytest.raises(Rejected, match="a number or a size from its input's values"):
        check_program(exported(ReadsItsInput(how), tmp_path))


class Branches(Embed):
    def forward(self, x):
        return torch.cond(x[0, 0] > 4, lambda t: t * 2, lambda t: t * 3, (self.e(x),))


class Draws(Embed):
    def forward(self, x):
        return self.e(x) + torch.rand(x.shape[0], x.shape[1], 10)


def test_a_model_that_branches_on_its_input_or_draws_random_numbers_is_rejected(tmp_path):
    """Which branch it took, or where its random numbers stood after the validation rows, could come
    back in an error's message on the next input."""
    with pytest.raises(Rejected, match="branches or loops on its input's values"):
        check_program(exported(Branches(), tmp_path))
    with pytest.raises(Rejected, match="draws random numbers"):
        check_program(exported(Draws(), tmp_path))


def test_attention_without_dropout_is_accepted(tmp_path):
    check_program(saved_and_loaded(Windowed(), tmp_path))


def test_in_place_work_on_intermediates_is_accepted(tmp_path):
    class InPlace(Embed):
        def forward(self, x):
            y = self.e(x)
            y.mul_(2)  # local, not state: fine once the program is made functional
            return torch.relu_(y)
    program = check_program(exported(InPlace(), tmp_path))
    assert program.module()(torch.randint(0, 10, (2, 5))).shape == (2, 5, 10)


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
        module_of(load_program(str(tmp_path / "model.pt2")))  # as the evaluator loads it
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


def test_a_model_file_with_bytes_before_its_first_entry_is_refused(tmp_path):
    """zipfile reads an archive behind any prefix (a sparse pad a run rewrites while the harness copies
    the file); torch.export.save writes none, so a prefix is refused, whatever follows it."""
    honest = honest_archive(tmp_path).read_bytes()
    path = tmp_path / "model.pt2"
    path.write_bytes(b"\0" * 4096 + honest)
    assert zipfile.ZipFile(path).namelist()  # Python's zipfile still finds the archive
    with pytest.raises(Rejected, match="does not start with a zip entry"):
        load_program(str(path))
