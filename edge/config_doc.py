"""The configuration reference (docs/config.md), generated from edge/config.py itself.

Every setting is a dataclass field whose trailing comment documents it; this reads those
comments with `ast` + `tokenize` so the reference cannot drift from the code. A section
dataclass names its table in its docstring ("(`[ingest]`)"); Config's own fields name theirs
in the comment ("[forward] batch_size: ..."). `python -m edge.config_doc > docs/config.md`.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from edge import config

SOURCE = Path(config.__file__)
_TABLE = re.compile(r"`\[\[?([a-z_]+)\]\]?`")
_CONFIG_FIELD = re.compile(r"^\[([a-z_]+)\] ([a-z_]+): (.+)$")


@dataclass(frozen=True)
class Setting:
    table: str
    key: str
    kind: str
    default: Any
    doc: str


def _comments(source: str) -> dict[int, str]:
    """Line number -> the comment on that line."""
    found: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found[token.start[0]] = token.string.lstrip("#").strip()
    return found


def _field_docs(source: str) -> dict[str, dict[str, str]]:
    """Class name -> field name -> its comment (on the field's first or last line)."""
    comments = _comments(source)
    docs: dict[str, dict[str, str]] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        docs[node.name] = {}
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                end = item.end_lineno or item.lineno
                text = comments.get(item.lineno) or comments.get(end, "")
                docs[node.name][item.target.id] = text
    return docs


def _default(f: Any) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, tuple):
        return "list of text"
    if isinstance(value, Path):
        return "path"
    return {int: "integer", float: "number", str: "text"}.get(type(value), type(value).__name__)


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    return repr(value)


def settings() -> list[Setting]:
    """Every setting of the TOML file, in file order of the sections; missing docs raise."""
    docs = _field_docs(SOURCE.read_text(encoding="utf-8"))
    found: list[Setting] = []
    missing: list[str] = []
    for f in fields(config.Config):
        doc = docs["Config"].get(f.name, "")
        default = _default(f)
        match = _CONFIG_FIELD.match(doc)
        if match:
            found.append(Setting(match[1], match[2], _kind(default), default, match[3]))
            continue
        cls: Any = config.Destination if f.name == "destinations" else type(default)
        table_match = _TABLE.search(cls.__doc__ or "")
        if table_match is None:
            missing.append(f"Config.{f.name}")
            continue
        instance: Any = cls(name="", kind="folder") if cls is config.Destination else cls()
        for sub in fields(cls):
            text = docs.get(cls.__name__, {}).get(sub.name, "")
            if not text:
                missing.append(f"{cls.__name__}.{sub.name}")
            value = getattr(instance, sub.name)
            found.append(Setting(table_match[1], sub.name, _kind(value), value, text))
    if missing:
        raise ValueError(f"{SOURCE}: settings without a documenting comment: {missing}")
    return found


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "One TOML file: `/etc/edge/edge.toml` by default, `edge run --config FILE` otherwise;",
        "`edge config check [--config FILE]` explains mistakes. Every setting has a default.",
        "Generated from edge/config.py by `python -m edge.config_doc > docs/config.md`",
        "(a test fails when this page and the code disagree).",
    ]
    by_table: dict[str, list[Setting]] = {}
    for s in settings():
        by_table.setdefault(s.table, []).append(s)
    for table, rows in by_table.items():
        header = f"[[{table}]]" if table == "destination" else f"[{table}]"
        lines += ["", f"## `{header}`", "", "| setting | type | default | meaning |"]
        lines.append("|---|---|---|---|")
        for s in rows:
            default = (
                "(required)"
                if s.key in ("name", "kind") and table == "destination"
                else (_shown(s.default))
            )
            doc = s.doc.replace("|", "\\|")
            lines.append(f"| `{s.key}` | {s.kind} | `{default}` | {doc} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
