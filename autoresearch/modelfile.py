"""
The model file an experiment hands over (model.pt2, a torch.export program): what it may hold, checked
before anything in it runs, and loading it as checked.

torch.export.load runs code from the file it reads (unpickling, sympy's eval, FX's generated code, the
input guards' exec), and the trusted evaluator that loads it sees the validation rows and answers for
the metric: so the file is checked as a zip with Python's reader, rebuilt in memory from exactly what
was checked, and the loaded program is checked again as a program (only plain tensor operations, no
state the forward pass could change between calls).

Imported by the evaluator as a script (`python -I autoresearch/evaluator.py`, from the folder beside
it) and by the harness and tests as autoresearch.modelfile: it needs nothing but the standard library
and torch.
"""

import ast
import functools
import json
import re
import zipfile

ALLOWED_NAMESPACES = ("aten", "prims", "higher_order", "_operator", "builtins", "math")
FORBIDDEN_OPS = ("from_file", "_load", "save", "print")  # operations that read or write files, or print (the
# evaluator's reply is a printed line)


class Rejected(Exception):
    """The handed-over program is not something the evaluator will run."""


def load_program(path):
    """The checked program in the file at `path`: checked as a file (check_archive), then loaded from
    the archive as checked (rebuilt: Python's zip reader and torch's need not find the same entries
    in a file made by hand), then checked as a program (check_program)."""
    import torch
    return check_program(torch.export.load(check_archive(path)))


def module_of(program):
    """The program's module, without the Python code torch makes of its input guards' text (the torch
    versions that make none have no such option)."""
    try:
        return program.module(check_guards=False)
    except TypeError:
        return program.module()


# -- what torch.export.load would run: refused before it reads the file ------------------------------
# torch.export.load unpickles the weights, constants and objects that say they are pickled (and sample
# inputs a weights-only load cannot read), turns each symbolic shape expression into an object with
# sympy.sympify (an eval), writes the graph's names into the Python code it makes and runs (FX), and a
# program's module turns its input guards' text into code (exec). A file made by hand could run anything
# in the evaluator, which sees the validation rows and answers for the metric. Accepted: an archive of
# torch.export.save's layout with raw tensor payloads, sample inputs a weights-only load reads, names
# that are names, tensor operations and control flow (nothing that prints), and expressions of shape
# symbols, numbers and sympy's functions; torch then reads that archive as checked, rebuilt.
ARCHIVE_ENTRY = re.compile(r"(archive_format|archive_version|byteorder|\.data/[\w.-]+|models/[\w.-]+\.json|"
                           r"data/(weights|constants)/[\w.-]+|data/sample_inputs/[\w.-]+\.pt)")
SHAPE_SYMBOL = re.compile(r"[a-z]+[0-9]+")  # s0, u3: the symbols export names sizes by
SYMBOL_ASSUMPTIONS = frozenset({"positive", "negative", "nonnegative", "nonpositive", "integer", "real",
                                "finite", "zero", "nonzero", "even", "odd", "rational"})
SYMPY_NAMES = frozenset({"Integer", "Rational", "Max", "Min", "Mod", "Abs", "Eq", "Ne", "Lt", "Le", "Gt", "Ge",
                         "Equality", "Unequality", "StrictLessThan", "LessThan", "StrictGreaterThan", "GreaterThan",
                         "And", "Or", "Not", "Pow", "Mul", "Add", "floor", "ceiling", "sqrt", "oo", "zoo", "int_oo",
                         "nan", "true", "false", "True", "False", "Half", "One", "Zero", "NegativeOne"})
NUMBER = re.compile(r"-?[0-9]+(\.[0-9]*)?(e-?[0-9]+)?")
GUARD_METHODS = frozenset({"size", "stride", "storage_offset", "dim", "numel"})
OPERATORS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.USub, ast.UAdd, ast.Not,
             ast.And, ast.Or, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.BitAnd, ast.BitOr)


def check_archive(path):
    """The archive at `path`, checked (see above) and rebuilt in memory from what was checked, for
    torch.export.load to read; Rejected when it holds what that loader would run code from."""
    import io
    import torch
    with open(path, "rb") as f:  # zipfile reads past bytes in front of the first entry; torch writes none
        if f.read(4) != b"PK\x03\x04":
            raise Rejected("the model file is not a torch.export archive (it does not start with a zip entry)")
    try:
        archive = zipfile.ZipFile(path)
        names = archive.namelist()
    except (OSError, zipfile.BadZipFile) as e:
        raise Rejected(f"the model file is not a torch.export archive ({e})") from None
    roots = {name.split("/", 1)[0] for name in names}
    if len(roots) != 1 or len({name.lower() for name in names}) != len(names):
        raise Rejected("the model file is not one torch.export archive (several roots, or repeated entries)")
    rebuilt = io.BytesIO()
    with archive, zipfile.ZipFile(rebuilt, "w", zipfile.ZIP_STORED) as copy:
        for name in names:
            entry = name.split("/", 1)[1] if "/" in name else ""
            if not ARCHIVE_ENTRY.fullmatch(entry) or re.fullmatch(r"data/(weights|constants)/.*\.pt", entry):
                raise Rejected(f"the model file holds {entry!r}, which torch.export.save does not write (or "
                               "would be unpickled)")
            data = archive.read(name)
            if entry.startswith(("data/weights/", "data/constants/")) and entry.endswith(".json"):
                _check_payloads(entry, _json(data, entry))
            elif entry.startswith("data/sample_inputs/"):
                try:  # what torch tries before a full unpickling
                    torch.load(io.BytesIO(data), weights_only=True)
                except Exception:
                    raise Rejected("the model file's sample inputs need a full unpickling") from None
            elif entry.startswith("models/"):
                _check_program_json(_json(data, entry))
            copy.writestr(name, data)
    rebuilt.seek(0)
    return rebuilt


def _json(data, entry):
    try:
        return json.loads(data)
    except ValueError:
        raise Rejected(f"the model file's {entry} is not JSON") from None


def _check_payloads(entry, config):
    for fqn, payload in (config.get("config") or {}).items() if isinstance(config, dict) else ():
        if not isinstance(payload, dict) or payload.get("use_pickle") or (
                entry.startswith("data/constants/") and not str(payload.get("path_name", "")).startswith("tensor_")):
            raise Rejected(f"the model file's {fqn!r} is pickled or an object, not a tensor")
        if not NAME.fullmatch(fqn) or not NAME.fullmatch(str(payload.get("path_name", ""))):
            raise Rejected(f"the model file names a tensor {fqn[:80]!r}: not a name")


NAME = re.compile(r"[A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")  # what torch writes into code as it is: x, blocks.0.attn
FREE_TEXT = frozenset({"metadata", "in_spec", "out_spec", "as_string", "as_strings", "torch_version"})
TARGET = re.compile(r"torch\.ops\.(aten|prims)\.\w+\.\w+|_operator\.\w+|math\.\w+|torch\.sym_\w+|torch\._sym_sqrt|"
                    r"torch\.ops\.higher_order\.(cond|while_loop|map_impl|scan|invoke_subgraph|"
                    r"wrap_with_set_grad_enabled|wrap_with_autocast|flex_attention)")


def _check_program_json(document):
    """A program's JSON: its expressions (expr_str) and input guards (guards_code) are plain (they
    are evaluated), its names are names (FX writes them into the code it makes and runs), its
    operations are tensor operations and the control flow that runs them (nothing that prints: the
    evaluator's reply is a printed line). Free text only where nothing runs it: metadata, tree specs."""
    stack = [(None, document)]
    while stack:
        key, item = stack.pop()
        if key in FREE_TEXT:
            continue
        if isinstance(item, list):
            stack.extend((key, value) for value in item)
        elif isinstance(item, dict):
            for name, value in item.items():
                if not NAME.fullmatch(name):
                    raise Rejected(f"the model file holds a name that is not one: {name[:80]!r}")
                if name == "expr_str":
                    if not (isinstance(value, str) and safe_expression(value)):
                        raise Rejected(f"the model file holds a shape expression that is not one: {str(value)[:80]!r}")
                elif name == "guards_code":
                    if not (isinstance(value, list) and all(isinstance(g, str) and safe_expression(g, guard=True)
                                                            for g in value)):
                        raise Rejected(f"the model file holds an input guard that is not one: {str(value)[:80]!r}")
                else:
                    stack.append((name, value))
        elif isinstance(item, str):
            if key in ("target", "as_operator") and (not TARGET.fullmatch(item) or "print" in item):
                raise Rejected(f"the model file calls {item[:80]!r}, which the evaluator does not run")
            if not NAME.fullmatch(item):
                raise Rejected(f"the model file holds a name that is not one: {item[:80]!r}")


def safe_expression(text, guard=False):
    """Whether `text` is a sympy expression of shape symbols, numbers and sympy's functions, as torch
    writes them (sympy's srepr: Mul(Integer(2048), Symbol('s0', positive=True, integer=True))); for a
    guard also about the inputs' sizes (L['x'].size()[0]): nothing sympify or exec could run."""
    if len(text) > 4096:  # sympify takes time in the text's size, and in its numbers' (2**2**30: seconds)
        return False
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        return False
    functions = _expression_functions()
    if any(isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow) for node in ast.walk(tree)):
        return False  # srepr writes powers as Pow(...)

    def safe(node):
        if isinstance(node, ast.Expression):
            return safe(node.body)
        if isinstance(node, ast.Constant):
            return type(node.value) in (int, float, bool) and abs(node.value) < 2 ** 63
        if isinstance(node, ast.Name):
            return node.id in functions or bool(SHAPE_SYMBOL.fullmatch(node.id)) or (guard and node.id == "L")
        if isinstance(node, (ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare)):
            operators = [getattr(node, "op", None)] + list(getattr(node, "ops", []))
            parts = [getattr(node, name) for name in ("left", "right", "operand") if hasattr(node, name)]
            parts += list(getattr(node, "values", [])) + list(getattr(node, "comparators", []))
            return all(isinstance(op, OPERATORS) for op in operators if op is not None) and all(map(safe, parts))
        if isinstance(node, ast.Call):
            return _safe_call(node, functions, guard, safe)
        if guard and isinstance(node, ast.Subscript):
            key = node.slice
            named = isinstance(key, ast.Constant) and isinstance(key.value, str) and key.value.isidentifier() \
                and not key.value.startswith("_")
            if isinstance(node.value, ast.Name) and node.value.id == "L":  # an input by name
                return named
            return safe(node.value) and (named or isinstance(key, ast.Constant) and type(key.value) is int)
        return False
    return safe(tree)


def _safe_call(node, functions, guard, safe):
    func = node.func
    if isinstance(func, ast.Name) and func.id == "Symbol":  # Symbol('s0', positive=True, integer=True)
        return (len(node.args) == 1 and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str) and bool(SHAPE_SYMBOL.fullmatch(node.args[0].value))
                and all(k.arg in SYMBOL_ASSUMPTIONS and isinstance(k.value, ast.Constant)
                        and type(k.value.value) is bool for k in node.keywords))
    if isinstance(func, ast.Name) and func.id == "Float":  # Float('1.5', precision=53), as srepr writes it
        return (len(node.args) == 1 and isinstance(node.args[0], ast.Constant)
                and (type(node.args[0].value) in (int, float) or bool(NUMBER.fullmatch(str(node.args[0].value))))
                and all(k.arg == "precision" and isinstance(k.value, ast.Constant) and type(k.value.value) is int
                        for k in node.keywords))
    if isinstance(func, ast.Name) and func.id == "Pow":  # small exponents only: 9**9**9 would never finish
        return (len(node.args) == 2 and not node.keywords and safe(node.args[0]) and safe(node.args[1])
                and all(abs(c.value) <= 64 for c in ast.walk(node.args[1]) if isinstance(c, ast.Constant)))
    if isinstance(func, ast.Name) and func.id in functions:
        return not node.keywords and all(map(safe, node.args))
    if guard and isinstance(func, ast.Attribute) and func.attr in GUARD_METHODS:
        return not node.args and not node.keywords and safe(func.value)
    return False


@functools.lru_cache(maxsize=None)
def _expression_functions():
    """The names of the functions expressions may call: SYMPY_NAMES and torch's sympy functions
    (FloorDiv, ModularIndexing, ...); once per process, not once per expression."""
    return SYMPY_NAMES | _torch_sympy_functions()


def _torch_sympy_functions():
    """The names of torch's sympy functions (FloorDiv, ModularIndexing, ...) that expressions use."""
    import sympy
    import torch.utils._sympy.functions as functions
    return {name for name, value in vars(functions).items()
            if isinstance(value, type) and issubclass(value, sympy.Basic) and not name.startswith("_")}


def check_program(program):
    """Refuse programs with state the forward pass mutates or operations outside plain tensor math.
    Returns the functional form of the program (in-place operations made explicit), the one to run."""
    _check_operations(program, in_place=True)  # before the re-trace below runs any of them
    if any(_may_mutate(node) for node in program.graph.nodes):
        program = program.run_decompositions({})  # functional: a mutated buffer shows in the signature
    signature = program.graph_signature
    if signature.buffers_to_mutate or signature.user_inputs_to_mutate:
        raise Rejected("the model changes its own state when called (mutated buffers); evaluation needs "
                       "a pure function of the input tokens")
    _check_operations(program, in_place=False)
    _check_data_independence(program)
    return program


def _check_operations(program, in_place):
    """Every operation of the program (subgraphs too) is plain tensor math (ALLOWED_NAMESPACES, none of
    FORBIDDEN_OPS); `in_place`: whether operations that change their inputs may still be there."""
    for node in _all_nodes(program):
        if node.op != "call_function":
            continue
        target = node.target
        schema = getattr(target, "_schema", None)
        name = getattr(target, "name", None)
        qualified = name() if callable(name) else \
            f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', target)}"
        namespace = getattr(target, "namespace", None) or str(qualified).split("::")[0].split(".")[0]
        if "higher_order" in str(getattr(target, "__module__", "")) or "HigherOrderOperator" in type(target).__name__:
            namespace = "higher_order"
        if namespace not in ALLOWED_NAMESPACES or any(bad in str(qualified) for bad in FORBIDDEN_OPS):
            raise Rejected(f"the model calls {qualified}, which the evaluator does not run")
        if not in_place and schema is not None and schema.is_mutable:
            raise Rejected(f"the model calls {qualified}, which changes its inputs or state in place")


# higher-order operations that branch or loop on a tensor's values
CONTROL_FLOW = ("CondOp", "WhileLoopOp", "ScanOp", "MapImpl", "AssociativeScanOp")


def _check_data_independence(program):
    """What the program does besides its arithmetic depends on no tensor's values and on no random
    numbers: no number or size read out of a tensor (.item(), nonzero), no branch or loop on one, no
    random draw (its generator's state would carry what an earlier call saw). Else which path it took
    (a check failing with its message, an index out of bounds, how long it ran, where the random
    numbers stood) could carry validation tokens back with an error. Checked by what each operation
    is (its tags) where that says it; sizes taken from values (nonzero, a boolean mask) by the symbols
    the file gives them, which it could disguise: what such a program says back is bounded by
    evaluator.failure_text."""
    import torch
    for node in _all_nodes(program):
        if node.op != "call_function":
            continue
        target, tags = node.target, set(getattr(node.target, "tags", ()))
        name = str(getattr(target, "__name__", target))
        if type(target).__name__ in CONTROL_FLOW:
            raise Rejected(f"the model branches or loops on its input's values ({name}), which the evaluator "
                           f"does not run")
        if torch.Tag.data_dependent_output in tags or _reads_values(node):
            raise Rejected(f"the model takes a number or a size from its input's values ({name}): what "
                           f"follows from it (a shape, a check and its message) would depend on the "
                           f"validation tokens")
        if torch.Tag.nondeterministic_seeded in tags and _draws(node):
            raise Rejected(f"the model draws random numbers ({name}): its evaluation must be a function of "
                           f"its input alone")


def _draws(node):
    """Whether a node tagged as drawing random numbers does: attention takes a dropout probability
    (0 at evaluation), anything else with the tag draws."""
    schema = getattr(node.target, "_schema", None)
    names = [a.name for a in schema.arguments] if schema is not None else []
    if "dropout_p" not in names:
        return True
    index = names.index("dropout_p")
    p = node.kwargs.get("dropout_p", node.args[index] if index < len(node.args) else 0.0)
    return not isinstance(p, (int, float)) or p != 0


def _reads_values(node):
    """Whether the node's result holds a number or size read out of a tensor's values (.item(), nonzero):
    torch.export's unbacked symbols."""
    from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols
    value = node.meta.get("val")
    try:
        return value is not None and bool(free_unbacked_symbols(value))
    except Exception:  # a value of a kind it does not know holds no symbol
        return False


def _all_nodes(program):
    """The nodes of the program's graph and of every graph inside it (the branches of a torch.cond,
    the body of a loop, ...): an operation hidden in a subgraph runs as surely as one at the top."""
    import torch
    for module in program.graph_module.modules():
        if isinstance(module, torch.fx.GraphModule):
            yield from module.graph.nodes


def _may_mutate(node):
    """An operation that could change a buffer in place: in-place or out= operations, and any
    higher-order operation (their subgraphs are not looked into here)."""
    if node.op != "call_function":
        return False
    schema = getattr(node.target, "_schema", None)
    return (schema.is_mutable if schema is not None else True)
