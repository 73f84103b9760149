"""
The trusted evaluator: val_bpb of a model an experiment handed over, computed outside the experiment.

The experiment's train.py exports its final model (prepare.export_model: a torch.export program,
graph and weights as data). The harness then runs this file in a fresh interpreter (`python -I`),
in a sandbox of its own that sees the validation rows but nothing writable and no network, with the
*campaign base commit's* prepare.py: the same `evaluate_bpb` (and causality probes) as always, but on
code and data the experiment never had in hand. Before anything in it runs, the model file is checked
(modelfile.py): torch.export's own layout and plain data only, then only plain tensor operations and
no state the forward pass could change between calls.

While the experiment trains, the evaluator checks and compiles the program of the campaign's last
kept run (--ahead): a model with the same graphs and constants then brings only its parameters, and
its evaluation starts at once (Prepared).

    python -I autoresearch/evaluator.py --experiment DIR --model FILE --batch-size N [--ahead FILE]
prints one JSON line: {"val_bpb": ..., "seconds": ..., "ahead": ...} or {"error": "..."} (exit 1).
"""

import argparse
import json
import operator
import os
import re
import signal
import subprocess
import sys
import time

if __package__:  # imported: the harness, the tests
    from autoresearch.modelfile import Rejected, load_program, module_of
else:  # the evaluator's own process, `python -I evaluator.py`: the module beside this file, whatever is installed
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # last: no name of ours hides another
    from modelfile import Rejected, load_program, module_of


def evaluate_program(path, batch_size, prepare, tokenizer, prepared=None):
    """val_bpb of the program at `path`. prepared: a Prepared program (prepare_ahead) that the model runs on
    when it computes the same function up to its parameters' values."""
    import torch
    program = load_program(path)
    width = checked_width(program, tokenizer.get_vocab_size())
    module, batch_size = module_of(program), max(1, min(int(batch_size), 4096))
    if prepared is not None and prepared.take(module):
        fast, precision, max_rows = prepared.fast, prepared.precision, prepared.max_rows  # compiled ahead
    else:
        if prepared is not None:
            prepared.release()
        fast, precision, max_rows = runnable(module, trial_rows(prepare, tokenizer))
    module = None
    if fast is None:  # a program inductor cannot compile still runs, eagerly, as it was exported
        torch.cuda.empty_cache()
        return prepare.evaluate_bpb(module_of(program), tokenizer, batch_size)
    if max_rows is not None:  # compiled
        batch_size = batch_rows(batch_size, max_rows)
    elif width:  # eagerly in the host's memory (CPU, MPS): the run sizes the logits, bounded as compiled ones are
        batch_size = max(1, min(batch_size, EAGER_LOGITS // (prepare.MAX_SEQ_LEN * width)))
    with precision:  # what fails from here on (the causality probes, say) is the program's failure
        return prepare.evaluate_bpb(fast, tokenizer, batch_size)


LOGITS_PADDING = 256  # columns the logits may have past the vocabulary (a vocabulary padded for the kernels)
EAGER_LOGITS = 1 << 28  # logits in one batch run eagerly (1 GiB in fp32; cross-entropy takes as much again)


def checked_width(program, vocab):
    """The width of the logits the program returns, as its exported output says (None where it says
    none). A run could pad its logits with columns no token has (all -inf: the same val_bpb) until the
    evaluation fills the machine's memory: wider than the vocabulary by more than LOGITS_PADDING is
    Rejected."""
    output = next((node for node in program.graph.nodes if node.op == "output"), None)
    values = output.args[0] if output is not None and output.args else ()
    value = getattr(values[0], "meta", {}).get("val") if isinstance(values, (tuple, list)) and values else None
    shape = getattr(value, "shape", None)
    if shape is None or len(shape) != 3:  # the evaluation's shape check says what is wrong
        return None
    width = shape[-1]
    if not isinstance(width, int):  # a vocabulary is a number; a width that grows with the batch is padding
        raise Rejected(f"the model returns logits whose width depends on its input ({width}): it must be the "
                       f"vocabulary's, {vocab}")
    if width > vocab + LOGITS_PADDING:
        raise Rejected(f"the model returns logits {width} wide for a vocabulary of {vocab}: at most "
                       f"{LOGITS_PADDING} columns more are allowed")
    return width


def batch_rows(requested, max_rows):
    """Rows per batch for a compiled program: at most `max_rows`, and a power of two, so that the
    validation rows divide into equal batches (a last, smaller one would be compiled again; one of a
    single row always is)."""
    rows = max(1, min(requested, max_rows))
    return 1 << (rows.bit_length() - 1)


TRIAL_ROWS = 2  # the batch a compiled program is first run on: small, so that it can run beside a training
INDEX_LIMIT = 2**31 - 1  # elements a kernel indexes with 32 bits; past them, inductor compiles another program


def trial_rows(prepare, tokenizer):
    """The validation rows a program is compiled on: the first few, whole (T + 1 tokens)."""
    return prepare._val_rows(tokenizer)[:TRIAL_ROWS]


def runnable(module, rows):
    """(callable, context to run it in, most rows per batch or None) for a checked program's module on
    its device: on a GPU compiled (for_gpu; Nones when it does not compile), elsewhere the module
    itself, eagerly (no most rows: its batches are the requested ones)."""
    import contextlib
    if next(module.parameters()).device.type != "cuda":
        return module, contextlib.nullcontext(), None
    return for_gpu(module, rows)


def for_gpu(module, rows):
    """(compiled module, context to run it in, most rows per batch) for a GPU, or Nones when it does not
    compile: compiled kernels, masked attention (train.py's sliding windows) as flex_attention, which
    skips the blocks a mask rules out, and bf16 autocast, the precision train.py evaluates in when run
    by hand, as the reference does. The program was exported without autocast, in the model's own
    dtypes, and checks them at each cast: those checks go."""
    import torch
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    block_sparse_attention(module)
    drop_dtype_checks(module)
    return compiled(module, rows, torch.autocast("cuda", dtype=torch.bfloat16))


def compiled(module, rows, precision, backend="inductor"):
    """(module compiled once for every call evaluate_bpb makes, context, most rows per batch), or Nones
    when it does not compile. `rows`: a few validation rows, run here as evaluate_bpb makes its inputs,
    so that a compilation failure shows before the evaluation starts. A second compilation (seconds,
    tens when cold) would come from any difference dynamo guards on: the batch size (compiled as a
    variable), the inputs' memory layout (evaluate_bpb's batches are views of longer rows, its causality
    probes are not: every input is made contiguous), and indexing past 32 bits (the batches stay within
    INDEX_LIMIT logits)."""
    import torch

    class Contiguous(torch.nn.Module):
        """The compiled module, called on a contiguous copy of its input with the batch size marked
        variable: one memory layout, one compilation."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            x = x.contiguous()
            torch._dynamo.maybe_mark_dynamic(x, 0)
            return self.inner(x)

    device = next(module.parameters()).device
    fast = Contiguous(torch.compile(module, backend=backend))
    try:
        with torch.no_grad(), precision:  # as evaluate_bpb runs it: the same compiled graph
            per_row = fast(rows.to(device)[:, :-1])[0].numel()
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()  # evaluate_bpb halves its batch
        return fast, precision, None
    except Exception as e:
        print(f"evaluator: the compiled bf16 program failed ({type(e).__name__}: {e}); evaluating eagerly in "
              "the program's own dtypes", file=sys.stderr)
        return None, None, None
    return fast, precision, max(1, INDEX_LIMIT // max(1, per_row))


# -- compiled ahead: the last kept run's program, while the experiment trains -------------------------
def graph_state(module):
    """What a checked program's module computes, apart from its parameters' values: the code of each of
    its graphs, how its inputs and outputs are laid out and which inputs it accepts, and everything those
    graphs read, in order: a floating-point parameter by name, shape, dtype, device and layout, any other
    tensor by its value too, anything else by type; with each, which earlier read is the same object
    (weights tied, or not). Two modules with equal states compute the same function once the one's
    parameters are copied into the other. Third: whether every tensor read is contiguous and alone in
    its memory, so that copying parameters in changes nothing else."""
    import torch
    code, reads, seen, storages, plain = [], [], {}, set(), True
    for prefix, sub in module.named_modules():
        is_graph = isinstance(sub, torch.fx.GraphModule)
        code.append((prefix, type(sub).__name__, sub.code if is_graph else None,
                     *(repr(getattr(sub, name, None)) for name in ("_in_spec", "_out_spec", "range_constraints",
                                                                   "validate_inputs"))))
        for node in sub.graph.nodes if is_graph else ():
            if node.op != "get_attr":
                continue
            value = operator.attrgetter(node.target)(sub)
            same_as = seen.setdefault(id(value), len(reads))
            weight = isinstance(value, torch.nn.Parameter) and value.is_floating_point()
            kind = "parameter" if weight else "tensor" if isinstance(value, torch.Tensor) else type(value).__name__
            if isinstance(value, torch.Tensor) and same_as == len(reads):
                storage = value.untyped_storage().data_ptr()
                plain = plain and value.is_contiguous() and (storage not in storages or value.numel() == 0)
                storages.add(storage)
            reads.append((kind, f"{prefix}:{node.target}", same_as, value))
    return code, reads, plain


def same_function(a, b):
    """Whether two graph_states compute the same function up to their parameters' values."""
    import torch
    (code_a, reads_a, plain_a), (code_b, reads_b, plain_b) = a, b
    if not (plain_a and plain_b) or code_a != code_b or len(reads_a) != len(reads_b):
        return False
    for (kind, name, same_as, x), (kind_b, name_b, same_as_b, y) in zip(reads_a, reads_b):
        if (kind, name, same_as) != (kind_b, name_b, same_as_b):
            return False
        meta = lambda t: (t.shape, t.dtype, t.device, t.layout)  # noqa: E731
        if isinstance(x, torch.Tensor) and meta(x) != meta(y):
            return False
        if kind == "tensor" and not torch.equal(x, y):
            return False
    return True


class Prepared:
    """A program compiled ahead of its request (prepare_ahead). A handed-over model that computes the
    same function up to its parameters' values runs on it, with its own parameters copied in: what the
    evaluation runs is then exactly the handed-over program, with nothing left to compile."""

    def __init__(self, state, fast, precision, max_rows=None):
        self.state, self.fast, self.precision, self.max_rows = state, fast, precision, max_rows
        self.taken = False  # whether a model has run on it

    def take(self, module):
        """Copy the parameters of `module` (a checked program's) in and return True when it computes
        the same function as the prepared one; else return False (and, should a copy fail half-way,
        never take anything again)."""
        import torch
        state = graph_state(module)
        if self.state is None or not same_function(self.state, state):
            return False
        try:
            with torch.no_grad():
                for i, ((kind, _, same_as, ours), (_, _, _, theirs)) in enumerate(zip(self.state[1], state[1])):
                    if kind == "parameter" and same_as == i:  # a tied parameter is copied once
                        ours.copy_(theirs)
        except Exception:
            self.state = None
            return False
        self.taken = True
        return True

    def release(self):
        """Let go of the prepared program (its weights, its compiled code), for an evaluation without it."""
        import torch
        self.state = self.fast = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


AHEAD_SHARE = 32  # the GPU memory the program compiled ahead may take while the experiment trains: 1/32


def prepare_ahead(path, prepare, tokenizer):
    """A Prepared program from the program at `path` (the campaign's last kept run's, an earlier
    experiment's: checked like any other), or None. On a GPU its compilation costs seconds
    (tens, cold); paid here, while the experiment trains, it is not paid again when the experiment's
    model has the same graph (only hyper-parameters changed, say). Beside the training, on a GPU it
    may take 1/AHEAD_SHARE of the memory, weights and trial run together: an earlier run's program
    cannot take this one's memory."""
    import torch
    cuda = torch.cuda.is_available()
    try:
        if cuda and os.path.getsize(path) > torch.cuda.get_device_properties(0).total_memory // AHEAD_SHARE:
            raise Rejected(f"over 1/{AHEAD_SHARE} of the GPU's memory")
        if cuda:
            torch.cuda.set_per_process_memory_fraction(1 / AHEAD_SHARE)
        module = module_of(load_program(path))
        state = graph_state(module)
        if not state[2]:
            raise Rejected("its tensors share memory or are not contiguous")
        fast, precision, max_rows = runnable(module, trial_rows(prepare, tokenizer))
        if cuda and fast is not None and max_rows is None:
            raise Rejected("its trial run ran out of the memory it may take")
    except Exception as e:  # nothing is lost: the model is compiled when it comes
        print(f"evaluator: the previous program was not compiled ahead ({type(e).__name__}: {e})", file=sys.stderr)
        return None
    finally:
        if cuda:
            torch.cuda.set_per_process_memory_fraction(1.0)
            torch.cuda.empty_cache()  # what the trial run took goes back to the training
    return Prepared(state, fast, precision, max_rows) if fast is not None else None


def drop_dtype_checks(module):
    """Remove the dtype assertions torch.export puts before each cast (aten._assert_tensor_metadata):
    under autocast a cast's input is bf16 where the export saw fp32, and the program would stop there.
    They check, they compute nothing. Returns how many were removed."""
    import torch
    check, removed = torch.ops.aten._assert_tensor_metadata.default, 0
    for graph_module in [m for m in module.modules() if isinstance(m, torch.fx.GraphModule)]:  # subgraphs too
        found = [node for node in graph_module.graph.nodes
                 if node.op == "call_function" and node.target is check and not node.users]
        for node in found:
            graph_module.graph.erase_node(node)
        if found:
            graph_module.recompile()
            removed += len(found)
    return removed


def block_sparse_attention(module):
    """Replace, in the program's module, each scaled_dot_product_attention whose mask is a constant
    boolean (Lq, Lk) matrix (no dropout, not is_causal, 4-D inputs of one dtype, every query with a key
    to see) by flex_attention with that same mask: the same function, but blocks the mask rules out
    entirely are skipped instead of computed and discarded. Returns how many calls were replaced."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    class FlexAttention(torch.nn.Module):
        def __init__(self, block_mask, scale, enable_gqa):
            super().__init__()
            self.block_mask, self.scale, self.enable_gqa = block_mask, scale, enable_gqa

        def forward(self, q, k, v):
            return flex_attention(q, k, v, block_mask=self.block_mask, scale=self.scale, enable_gqa=self.enable_gqa)

    sdpa, replaced, block_masks = torch.ops.aten.scaled_dot_product_attention.default, 0, {}
    for node in list(module.graph.nodes):
        if node.op != "call_function" or node.target is not sdpa:
            continue
        q, k, v, *rest = node.args
        options = dict(zip(("attn_mask", "dropout_p", "is_causal"), rest), **node.kwargs)
        mask = options.get("attn_mask")
        if not isinstance(mask, torch.fx.Node) or mask.op != "get_attr" or options.get("dropout_p") \
                or options.get("is_causal"):
            continue
        fakes = [getattr(n, "meta", {}).get("val") for n in (q, k, v)]  # what export traced them as
        dense = operator.attrgetter(mask.target)(module)
        if not (all(isinstance(t, torch.Tensor) and t.dim() == 4 and t.dtype == fakes[0].dtype for t in fakes)
                and isinstance(dense, torch.Tensor) and dense.dtype == torch.bool
                and tuple(dense.shape) == (fakes[0].shape[-2], fakes[1].shape[-2])
                and dense.device == fakes[0].device and bool(dense.any(dim=-1).all())):
            continue  # anything else runs as it was exported
        if mask.target not in block_masks:
            block_masks[mask.target] = create_block_mask(lambda b, h, qi, ki, dense=dense: dense[qi, ki], None, None,
                                                         *dense.shape, device=dense.device)
        name = f"block_sparse_attention_{replaced}"
        module.add_submodule(name, FlexAttention(block_masks[mask.target], options.get("scale"),
                                                 options.get("enable_gqa", False)))
        with module.graph.inserting_before(node):
            flex = module.graph.call_module(name, (q, k, v))
        node.replace_all_uses_with(flex)
        module.graph.erase_node(node)
        replaced += 1
    if replaced:
        module.graph.lint()
        module.recompile()
    return replaced


def answer(request, prepare, tokenizer, prepared=None):
    """One evaluation as a JSON-able dict: {"val_bpb", "seconds", "ahead"} or {"error"}; "ahead": whether
    the model ran on the program `prepared` ahead."""
    t0 = time.time()
    try:
        val_bpb = evaluate_program(request["model"], request["batch_size"], prepare, tokenizer, prepared)
    except Rejected as e:
        return {"error": str(e)}
    except Exception as e:  # anything the program does wrong is the experiment's failure, in one line
        return {"error": failure_text(e, request["model"], prepare, tokenizer)}
    return {"val_bpb": val_bpb, "seconds": time.time() - t0, "ahead": prepared is not None and prepared.taken}


VERDICTS = ("the model is not causal",)  # prepare.py's own refusals, not the program's errors


def failure_text(error, path, prepare, tokenizer):
    """What an evaluation's failure may say: it was raised while the program ran on validation rows, and
    its message could carry their tokens (an index out of bounds says which index) back to train.py, the
    ledger and the next proposer's prompt. The program is run again, eagerly, on random tokens (it holds
    no state, draws no random numbers and takes no path by its input's values: modelfile.check_program):
    when it fails there too, that message, its numbers withheld, says what is wrong; when it fails on
    the validation rows only, the message is withheld. A verdict of prepare.py's comes back with its
    numbers withheld."""
    import torch
    text = " ".join(str(error).split())
    if text.startswith(VERDICTS):
        return f"{type(error).__name__}: {withheld(text)[:500]}"
    try:
        module = module_of(load_program(path))
        device = next(module.parameters()).device
        tokens = torch.randint(0, tokenizer.get_vocab_size(), (2, prepare.MAX_SEQ_LEN),
                               generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            logits = module(tokens.to(device))
    except Exception as again:  # numbers withheld still: an allocator's counts carry what ran before
        return f"{type(again).__name__}: {withheld(' '.join(str(again).split()))[:500]} (on random tokens too)"
    shape = tuple(getattr(logits, "shape", ()))
    if shape[:2] != tuple(tokens.shape) or len(shape) != 3 or shape[2] < tokenizer.get_vocab_size():
        return f"the model must return logits of shape (B, T, vocab); on random tokens it returned {shape}"
    return (f"{type(error).__name__} on the validation rows only, not on random tokens; its message is "
            f"withheld (it could carry validation tokens)")


def withheld(text):
    """text with its numbers as #; digits that are part of a name (float32, conv2d) stay."""
    return re.sub(r"0[xX][0-9a-fA-F]+|(?<![A-Za-z0-9_.])\d+(\.\d+)?([eE][-+]?\d+)?", "#", text)


def warm_up():
    """On a GPU, what the first compilation pays whatever the model, paid while the experiment trains:
    the CUDA context, and the compiler's own modules and worker processes (dynamo, inductor, triton).
    The context takes some of the GPU's memory (about half a GB) from the training meanwhile."""
    import torch
    if not torch.cuda.is_available():
        return
    try:
        torch.compile(lambda x: x * 2 + 1, dynamic=False)(torch.ones(8, device="cuda"))
    except Exception as e:  # the model's own compilation will say what is wrong, or fall back
        print(f"evaluator: warming the compiler up failed ({type(e).__name__}: {e})", file=sys.stderr)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Evaluate a handed-over model with the base commit's prepare.py.")
    parser.add_argument("--experiment", required=True, help="folder with the base commit's prepare.py")
    parser.add_argument("--model", help="the torch.export program (model.pt2); without it, requests "
                                        '{"model": PATH, "batch_size": N} are read from stdin, one per line')
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ahead", help="a program to compile while the experiment trains (the campaign's last "
                                        "kept run's): a model with its graphs then brings only its weights")
    args = parser.parse_args(argv)
    # the replies go to the standard output the harness reads, and nothing else does: whatever else prints
    # (Python or C++, torch's or a program's) goes to the standard error, the log
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # everything that does not need the model first: under the harness this overlaps the training
    sys.path.insert(0, args.experiment)
    import torch
    import torch._export.serde.serialize  # noqa: F401  (what torch.export.load needs, imported ahead)
    import prepare
    tokenizer = prepare.Tokenizer.from_directory()
    prepare._val_rows(tokenizer)
    warm_up()
    prepared = prepare_ahead(args.ahead, prepare, tokenizer) if args.ahead else None
    requests = [{"model": args.model, "batch_size": args.batch_size}] if args.model else \
        (json.loads(line) for line in sys.stdin if line.strip())
    failed = False
    for request in requests:
        reply, prepared = answer(request, prepare, tokenizer, prepared), None
        failed = failed or "error" in reply
        print(json.dumps(reply), file=replies, flush=True)
    return 1 if failed else 0


# -- the harness's side ------------------------------------------------------------------------
class Evaluator:
    """The evaluator process of one experiment, started with it so that its start-up (Python, torch,
    the tokenizer, the validation rows) overlaps the training; `evaluate()` once the model is in."""

    def __init__(self, experiment_dir, model_dir, profile, cache_dir, sandboxed, placement=None, compile_cache=None,
                 group=None):
        """compile_cache: the evaluators' own folder, where their torch.compile caches persist, and the
        program of the campaign's last kept run (compilecache.PROGRAM), which this one compiles ahead.
        group: its control groups (limits.Group): the program it runs is the run's, and so is the batch
        size it asks for, so what it takes of the machine is bounded as the run is."""
        from autoresearch import bytecode, compilecache, limits, sandbox
        here = os.path.dirname(os.path.abspath(__file__))
        inner = [os.path.join(here, "evaluator.py"), "--experiment", experiment_dir]
        env = {"AUTORESEARCH_PROFILE": profile, "AUTORESEARCH_CACHE": cache_dir}
        if compile_cache:
            env.update(compilecache.environment(compile_cache))
            ahead = compilecache.remembered_program(compile_cache)
            inner += ["--ahead", ahead] if ahead else []
        if sandboxed:
            argv = sandbox.base_args()
            for path in (here, experiment_dir, model_dir, os.path.join(cache_dir, profile)):
                argv += ["--ro-bind", path, path]
            if compile_cache:
                argv += ["--bind", compile_cache, compile_cache]
            code = sandbox.python_bytecode(cache_dir)
            argv += bytecode.sandbox_args(code)
            for key, value in sorted({**sandbox.kept_environment(placement), **env}.items()):
                argv += ["--setenv", key, value]
            argv = sandbox.sealed(argv) + ["--", sys.executable, "-I", *bytecode.python_args(code), *inner]
            env = None
        else:
            argv, env = [sys.executable, "-I", *inner], {**sandbox.kept_environment(placement), **env}
        argv = limits.command(argv, group)
        self.errors = os.path.join(model_dir, "evaluator.log")  # a file: a full pipe would block it
        with open(self.errors, "w") as errors:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors,
                                         text=True, env=env, start_new_session=True)

    def evaluate(self, model_path, batch_size, timeout):
        """The evaluator's reply for one model: {"val_bpb": ...} or {"error": ...}."""
        import threading
        reply = {}

        def talk():
            try:
                self.proc.stdin.write(json.dumps({"model": model_path, "batch_size": batch_size}) + "\n")
                self.proc.stdin.flush()
                line = self.proc.stdout.readline()
                reply.update(json.loads(line) if line.strip() else {})
            except (OSError, ValueError):
                pass
        worker = threading.Thread(target=talk, daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            self.close()
            return {"error": f"the evaluation took longer than {timeout:g} s"}
        if not isinstance(reply, dict) or not reply:
            self.close()
            with open(self.errors, errors="replace") as f:
                tail = ([line for line in f.read().splitlines() if line.strip()] or ["no reply"])[-1]
            return {"error": f"the evaluator failed: {withheld(tail)[:300]}"}
        return reply

    def close(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


if __name__ == "__main__":
    sys.exit(main())
