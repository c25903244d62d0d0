"""The hot path's sources keep to what mypyc compiles fast."""

from __future__ import annotations

import ast

from streams.compiled import ROOT, compiled_sources


def _is_final(annotation: ast.expr | None) -> bool:
    if annotation is None:
        return False
    if isinstance(annotation, ast.Subscript):
        annotation = annotation.value
    return isinstance(annotation, ast.Name) and annotation.id == "Final"


def test_module_constants_of_compiled_modules_are_final() -> None:
    """Compiled code reads a module-level name that is not ``Final`` from the module's dict,
    on every use (a lookup and an unboxing); a ``Final`` one is a C constant or static.
    Declaring the constants ``Final`` cut the stages' instructions by 5 % (BENCHMARKS.md,
    "Twenty-fourth session")."""
    sources = compiled_sources()
    assert sources, "no compiled modules listed in pyproject.toml"
    plain: list[str] = []
    for source in sources:
        for node in ast.parse(source.read_text()).body:
            if isinstance(node, ast.Assign):
                targets, annotation = node.targets, None
                if isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") in (
                        "TypeVar", "ParamSpec"):
                    continue
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                targets, annotation = [node.target], node.annotation
            else:
                continue
            for target in targets:
                if (isinstance(target, ast.Name) and target.id.lstrip("_")[:1].isupper()
                        and target.id.upper() == target.id and not _is_final(annotation)):
                    plain.append(f"{source.relative_to(ROOT)}:{node.lineno} {target.id}")
    assert not plain, ("module constants of compiled modules without Final (write "
                       "`NAME: Final = ...`): " + ", ".join(plain))
