"""
The trusted evaluator: val_bpb of a model an experiment handed over, computed outside the experiment.

The experiment's train.py exports its final model (prepare.export_model: a torch.export program,
graph and weights as data). The harness then runs this file in a fresh interpreter (`python -I`),
in a sandbox of its own that sees the validation rows but nothing writable and no network, with the
*campaign base commit's* prepare.py: the same `evaluate_bpb` (and causality probes) as always, but on
code and data the experiment never had in hand. Before anything runs, the program is checked: only
plain tensor operations, no state the forward pass could change between calls.

    python -I autoresearch/evaluator.py --experiment DIR --model FILE --batch-size N
prints one JSON line: {"val_bpb": ..., "seconds": ...} or {"error": "..."} (exit 1).
"""

import argparse
import json
import os
import subprocess
import sys
import time

ALLOWED_NAMESPACES = ("aten", "prims", "higher_order", "_operator", "builtins", "math")
FORBIDDEN_OPS = ("from_file", "_load", "save")  # operations that read or write files


class Rejected(Exception):
    """The handed-over program is not something the evaluator will run."""


def check_program(program):
    """Refuse programs with state the forward pass mutates or operations outside plain tensor math."""
    signature = program.graph_signature
    if signature.buffers_to_mutate or signature.user_inputs_to_mutate:
        raise Rejected("the model changes its own state when called (mutated buffers); evaluation needs "
                       "a pure function of the input tokens")
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        target = node.target
        name = getattr(target, "name", None)
        qualified = name() if callable(name) else f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', target)}"
        namespace = getattr(target, "namespace", None) or str(qualified).split("::")[0].split(".")[0]
        if "higher_order" in str(getattr(target, "__module__", "")) or "HigherOrderOperator" in type(target).__name__:
            namespace = "higher_order"
        if namespace not in ALLOWED_NAMESPACES or any(bad in str(qualified) for bad in FORBIDDEN_OPS):
            raise Rejected(f"the model calls {qualified}, which the evaluator does not run")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Evaluate a handed-over model with the base commit's prepare.py.")
    parser.add_argument("--experiment", required=True, help="folder with the base commit's prepare.py")
    parser.add_argument("--model", required=True, help="the torch.export program (model.pt2)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    t0 = time.time()
    sys.path.insert(0, args.experiment)
    try:
        import torch
        import prepare
        program = torch.export.load(args.model)
        check_program(program)
        model = program.module()
        tokenizer = prepare.Tokenizer.from_directory()
        val_bpb = prepare.evaluate_bpb(model, tokenizer, max(1, min(args.batch_size, 4096)))
    except Rejected as e:
        print(json.dumps({"error": str(e)}))
        return 1
    except Exception as e:  # anything the program does wrong is the experiment's failure, in one line
        message = " ".join(str(e).split())[:500]
        print(json.dumps({"error": f"{type(e).__name__}: {message}"}))
        return 1
    print(json.dumps({"val_bpb": val_bpb, "seconds": time.time() - t0}))
    return 0


# -- the harness's side ------------------------------------------------------------------------
def command(experiment_dir, model_path, batch_size, profile, cache_dir, sandboxed):
    """argv of the evaluator for a model in model_path, sandboxed with bubblewrap when asked."""
    from autoresearch import sandbox
    inner = [sys.executable, "-I", os.path.abspath(__file__), "--experiment", experiment_dir,
             "--model", model_path, "--batch-size", str(int(batch_size))]
    env = {"AUTORESEARCH_PROFILE": profile, "AUTORESEARCH_CACHE": cache_dir, "PYTHONDONTWRITEBYTECODE": "1"}
    if not sandboxed:
        return inner, {**os.environ, **env}
    args = sandbox.base_args()
    args += ["--ro-bind", os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.abspath(__file__)),
             "--ro-bind", experiment_dir, experiment_dir, "--ro-bind", model_path, model_path,
             "--ro-bind", os.path.join(cache_dir, profile), os.path.join(cache_dir, profile)]
    for key, value in sorted({**sandbox.kept_environment(), **env}.items()):
        args += ["--setenv", key, value]
    return args + ["--"] + inner, None


def evaluate(experiment_dir, model_path, batch_size, profile, cache_dir, sandboxed, timeout):
    """Run the evaluator; returns its JSON reply (a dict with val_bpb, or with error)."""
    argv, env = command(experiment_dir, model_path, batch_size, profile, cache_dir, sandboxed)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": f"the evaluation took longer than {timeout:g} s"}
    lines = proc.stdout.strip().splitlines()
    try:
        reply = json.loads(lines[-1])
        if not isinstance(reply, dict):
            raise ValueError
    except (IndexError, ValueError):
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return {"error": f"the evaluator failed: {tail[:300]}"}
    return reply


if __name__ == "__main__":
    sys.exit(main())
