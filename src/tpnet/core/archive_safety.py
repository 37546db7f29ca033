"""What a model archive may contain before torch is allowed to load it.

A model file comes from outside (a colleague, a download), so loading it must never run code. torch does
not promise that: ``torch.export.load`` (torch 2.14) unpickles weights and constants marked ``use_pickle``
and custom/opaque objects with the full unpickler, falls back to ``weights_only=False`` for sample inputs,
compiles the program's ``guards_code`` as Python, evaluates symbolic-shape strings with ``sympy.sympify``
(``eval``), resolves graph-node targets to any ``torch.*`` callable and dlopens AOTInductor libraries.
TorchScript's loader unpickles only TorchScript types, but the archive's code may call ``torch.save`` or
``torch.from_file`` and any registered custom op.

A tpnet network needs none of that, so these checks allow only what ``tpnet-export`` writes (plain
tensors, ATen operators, plain symbolic sizes) and refuse everything else *before* torch sees the bytes.
The caller then hands torch the very bytes that were checked (no second read of the file). torch itself is
imported only to check a pickle, so the ONNX path (``tpnet.core.onnx_model``, which uses UnsafeModelError)
imports none of it.
"""

from __future__ import annotations

import ast
import io
import json
import re
import tokenize
import zipfile
from collections.abc import Iterator


class UnsafeModelError(ValueError):
    """The archive holds something that could run code or touch files when loaded; says what and where."""


# ATen operators that read or write files (found by scanning every aten schema for file-name arguments).
FILE_OPERATORS: frozenset[str] = frozenset({"save", "from_file"})

# Graph-node targets that are not ATen operators but plain arithmetic on symbolic sizes (torch's _SYM_OPS).
SYMBOLIC_SIZE_TARGETS: frozenset[str] = frozenset(
    {f"_operator.{op}" for op in ("eq", "ne", "le", "ge", "lt", "gt", "neg", "pos", "mul", "add", "sub")}
    | {f"_operator.{op}" for op in ("floordiv", "mod", "pow", "truediv", "and_", "or_", "lshift", "rshift")}
    | {"math.trunc"}
    | {
        f"torch.{op}"
        for op in ("sym_not", "sym_int", "sym_float", "sym_ite", "sym_max", "sym_min", "sym_sqrt")
    }
)
_FILE_OPERATOR_WORD = re.compile(r"\b(?:" + "|".join(sorted(FILE_OPERATORS)) + r")\b")
_ATEN_TARGET = re.compile(r"torch\.ops\.aten\.(?P<op>[A-Za-z0-9_]+)\.[A-Za-z0-9_]+")

# Names a symbolic-shape string may use: sympy's srepr/str vocabulary and torch's size functions. Anything
# else (builtins, attribute access, lambdas, sympy's own code-running helpers) is refused.
SYMPY_NAMES: frozenset[str] = frozenset(
    {
        "Symbol", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Max", "Min", "Abs", "Mod",
        "floor", "ceiling", "sqrt", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "StrictLessThan",
        "StrictGreaterThan", "LessThan", "GreaterThan", "Equality", "Unequality", "And", "Or", "Not",
        "Piecewise", "ExprCondPair", "oo", "zoo", "nan", "true", "false", "True", "False", "Infinity",
        "NegativeInfinity", "IntInfinity", "NegativeIntInfinity", "int_oo",
        "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt",
        "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
        "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal",
        "ToFloat", "Identity",
        # Symbol(...) assumptions, e.g. Symbol('s30', positive=True, integer=True)
        "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "zero",
    }
)  # fmt: skip
_SYMBOL_NAME = re.compile(r"[a-z]{1,4}[0-9]+")  # s30, u0, zuf1: the only string literals allowed
_SYMPY_OPERATORS = frozenset({"(", ")", ",", "=", "+", "-", "*", "/", "%", "<", ">", "<=", ">=", "==", "!="})
_MAX_EXPR_CHARS = 10_000

# Shape guards (``guards_code``): Python expressions over ``L['<input>'].size()[i]`` and torch.sym_* helpers.
_GUARD_NODES = (
    ast.Expression, ast.Load, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.Constant, ast.Subscript,
    ast.Call, ast.Attribute, ast.Name, ast.Tuple,
    ast.And, ast.Or, ast.Not, ast.USub, ast.UAdd, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod,
    ast.Pow, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE,
)  # fmt: skip
# Python's max / min: torch 2.11's exporter writes them into guards, e.g. a U-Net's padded size
# "(max(1, L['x'].size()[3] // 32)*max(1, L['x'].size()[2] // 32)) != 1" (seen on a GPU machine, 2026-12-04);
# on arguments that can only be size arithmetic they compute, never run code.
_GUARD_NAMES = frozenset({"L", "torch", "math", "IsNonOverlappingAndDenseIndicator", "max", "min"})
_GUARD_ATTRIBUTES = frozenset(
    {"size", "stride", "storage_offset", "dim", "numel", "floor", "ceil", "trunc", "sqrt"}
    | {f"sym_{op}" for op in ("max", "min", "not", "float", "int", "ite", "sqrt", "sum")}
)
_INPUT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

_FIXED_MEMBERS = frozenset(
    {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
)
_MEMBER_LAYOUT = re.compile(
    r"models/[^/]+\.json|data/(weights|constants)/[^/]+_(weights|constants)_config\.json"
    r"|data/sample_inputs/[^/]+\.pt|extra/[^/]+"
)
_PAYLOAD_DIRS = ("data/weights/", "data/constants/")
_PAYLOAD_PREFIXES = ("weight_", "tensor_")  # raw tensor bytes; custom_obj_/opaque_obj_ are pickles


def check_pt2_archive(data: bytes) -> None:
    """Raise UnsafeModelError unless the torch.export archive ``data`` holds only tensors and ATen graphs."""
    archive, prefix = _open_single_root(data)
    with archive:
        members = [name[len(prefix) :] for name in archive.namelist()]
        payloads = _raw_payloads(archive, prefix, members)
        for member in members:
            if member in _FIXED_MEMBERS or member in payloads or _MEMBER_LAYOUT.fullmatch(member):
                continue
            why = "a compiled AOTInductor library" if member.startswith("data/aotinductor/") else "unexpected"
            raise UnsafeModelError(
                f"archive member {prefix}{member} is {why}; tpnet model files never hold one"
            )
        for member in members:
            if member.startswith("models/"):
                _check_program(json.loads(archive.read(prefix + member)), prefix + member)
            elif member.startswith("data/sample_inputs/"):
                _check_weights_only_pickle(archive.read(prefix + member), prefix + member)


def check_torchscript_archive(data: bytes) -> None:
    """Raise UnsafeModelError if a TorchScript archive's code reaches files or non-ATen custom operators."""
    archive, prefix = _open_single_root(data)
    with archive:
        for name in archive.namelist():
            if not (name.startswith(prefix + "code/") and name.endswith(".py")):
                continue
            source = archive.read(name).decode("utf-8", errors="replace")
            if match := _FILE_OPERATOR_WORD.search(source):
                raise UnsafeModelError(f"{name} calls {match.group()!r}, a file operation")
            if match := re.search(r"\bops\s*\.\s*(?!aten\b|prim\b)(\w+)", source):
                raise UnsafeModelError(
                    f"{name} calls custom operators 'ops.{match.group(1)}'; only ATen is allowed"
                )


def _open_single_root(data: bytes) -> tuple[zipfile.ZipFile, str]:
    """Every member under one top-level folder, no duplicates (two readers could pick different copies)."""
    archive = zipfile.ZipFile(io.BytesIO(data))
    names = archive.namelist()
    if len(set(names)) != len(names):
        archive.close()
        raise UnsafeModelError("archive holds two members with the same name")
    prefix = names[0].split("/", 1)[0] + "/" if names and "/" in names[0] else ""
    strays = [n for n in names if not prefix or not n.startswith(prefix)]
    if strays:
        archive.close()
        raise UnsafeModelError(f"archive member {strays[0]!r} lies outside the archive's top-level folder")
    return archive, prefix


def _raw_payloads(archive: zipfile.ZipFile, prefix: str, members: list[str]) -> set[str]:
    """Members the payload configs declare as raw tensor bytes; refuses any entry torch would unpickle."""
    payloads: set[str] = set()
    for member in members:
        if not (member.startswith(_PAYLOAD_DIRS) and member.endswith("_config.json")):
            continue
        folder = member.rsplit("/", 1)[0] + "/"
        config = json.loads(archive.read(prefix + member)).get("config", {})
        for fqn, entry in config.items():
            path_name = str(entry.get("path_name", ""))
            if entry.get("use_pickle") or not path_name.startswith(_PAYLOAD_PREFIXES) or "/" in path_name:
                raise UnsafeModelError(
                    f"{prefix}{member}: {fqn!r} is stored as a pickle ({path_name!r}), which loading would "
                    "execute; tpnet model files hold plain tensors only"
                )
            payloads.add(folder + path_name)
    return payloads


def _check_weights_only_pickle(raw: bytes, where: str) -> None:
    # torch tries weights_only=True first and falls back to the full unpickler only if that fails.
    import torch

    try:
        torch.load(io.BytesIO(raw), weights_only=True)
    except Exception as exc:
        raise UnsafeModelError(
            f"{where} does not load as plain tensors (weights_only=True: {type(exc).__name__}); "
            "loading it would run the full unpickler"
        ) from None


def _check_program(program: object, where: str) -> None:
    if not isinstance(program, dict):
        raise UnsafeModelError(f"{where} is not a serialized program")
    guards = program.get("guards_code") or []
    if not isinstance(guards, list):
        raise UnsafeModelError(f"{where}: 'guards_code' is not a list of expressions")
    for guard in guards:
        _check_guard(guard, where)
    for node in _graph_nodes(program):
        _check_target(node.get("target"), where)
    for expr in _values_of(program, "expr_str"):
        _check_sympy_expression(expr, where)


def _graph_nodes(tree: object) -> Iterator[dict]:
    """Every node of every graph (subgraphs included) in the program's JSON."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == "nodes" and isinstance(value, list):
                yield from (node for node in value if isinstance(node, dict))
            yield from _graph_nodes(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _graph_nodes(value)


def _values_of(tree: object, wanted: str) -> Iterator[object]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == wanted:
                yield value
            yield from _values_of(value, wanted)
    elif isinstance(tree, list):
        for value in tree:
            yield from _values_of(value, wanted)


def _check_guard(guard: object, where: str) -> None:
    """A guard is Python that torch compiles and runs on every call, e.g. ``(L['x'].size()[3] // 8) != 1``:
    allow only size arithmetic on the inputs (names, attributes and calls from short lists)."""
    try:
        tree = (
            ast.parse(guard, mode="eval")
            if isinstance(guard, str) and len(guard) <= _MAX_EXPR_CHARS
            else None
        )
    except (SyntaxError, ValueError, RecursionError):
        tree = None
    if tree is None:
        raise UnsafeModelError(f"{where}: a 'guards_code' entry is not a short Python expression")
    for node in ast.walk(tree):
        bad = None
        if not isinstance(node, _GUARD_NODES):
            bad = type(node).__name__
        elif isinstance(node, ast.Name) and node.id not in _GUARD_NAMES:
            bad = node.id
        elif isinstance(node, ast.Attribute) and node.attr not in _GUARD_ATTRIBUTES:
            bad = node.attr
        elif isinstance(node, ast.Call) and (
            node.keywords or not isinstance(node.func, ast.Attribute | ast.Name)
        ):
            bad = "a call of that form"
        elif isinstance(node, ast.Constant) and not (
            isinstance(node.value, int | float | bool)
            or (isinstance(node.value, str) and _INPUT_NAME.fullmatch(node.value))
        ):
            bad = repr(node.value)
        if bad is not None:
            raise UnsafeModelError(
                f"{where}: guard {guard[:80]!r} uses {bad}, which a shape guard never needs "
                "(torch would compile and run it as Python)"
            )


def _check_target(target: object, where: str) -> None:
    if isinstance(target, str) and "__" not in target:
        if target in SYMBOLIC_SIZE_TARGETS:
            return
        aten = _ATEN_TARGET.fullmatch(target)
        if aten and aten.group("op") not in FILE_OPERATORS:
            return
    raise UnsafeModelError(f"{where}: a graph node calls {target!r}; only ATen tensor operators are allowed")


def _check_sympy_expression(expr: object, where: str) -> None:
    """Allow only names, numbers, symbol-name strings and operators of a plain size expression."""
    if not isinstance(expr, str) or len(expr) > _MAX_EXPR_CHARS:
        raise UnsafeModelError(f"{where}: a symbolic size is not a short string")
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(expr).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        raise UnsafeModelError(f"{where}: symbolic size {expr[:80]!r} does not parse") from None
    for tok in tokens:
        allowed = (
            tok.type in (tokenize.NUMBER, tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER)
            or (tok.type == tokenize.NAME and tok.string in SYMPY_NAMES)
            or (tok.type == tokenize.OP and tok.string in _SYMPY_OPERATORS)
            or (tok.type == tokenize.STRING and _SYMBOL_NAME.fullmatch(tok.string[1:-1]) is not None
                and tok.string[0] == tok.string[-1] and tok.string[0] in "'\"")
        )  # fmt: skip
        if not allowed:
            raise UnsafeModelError(
                f"{where}: symbolic size {expr[:80]!r} uses {tok.string!r}, which a size expression never "
                "needs (sympy would evaluate it as Python)"
            )
