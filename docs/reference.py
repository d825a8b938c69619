"""Regenerate the README's command-line and configuration references, and the docs' settings tables,
from the code.

    .venv/bin/python docs/reference.py          # rewrite README.md and docs/*.md between their markers
    .venv/bin/python docs/reference.py --check  # exit 1 if any of them is stale (a test runs this)

In docs/*.md, ``<!-- CONFIG adapt -->`` ... ``<!-- /CONFIG adapt -->`` holds the table of one
``params.yaml`` section, so no page can state a default the code does not have.

The command reference walks the typer app; the configuration reference reads every step's
``Config`` dataclass (the comment beside each field is its meaning) and the values of the active
``params.yaml`` and its presets.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# params.yaml section -> the Config dataclass that reads it.
SECTIONS: dict[str, str] = {
    "data": "components.data:Config",
    "corrupt": "components.data:CorruptConfig",
    "pretrain": "components.pretrain:Config",
    "generator": "components.train_generator:Config",
    "adapt": "components.adapt:Config",
    "evaluate": "components.evaluate:Config",
    "promote": "lifecycle.promotion:Config",
    "mlflow": "lifecycle.tracking:Config",
    "serve": "serving.package:Config",
}


def _section_classes() -> dict[str, type]:
    out = {}
    for section, target in SECTIONS.items():
        module, _, name = target.partition(":")
        out[section] = getattr(importlib.import_module(module), name)
    return out


def field_comments(cls: type) -> dict[str, str]:
    """``name: type = default  # meaning`` -> {name: meaning}; a comment line above a field counts too."""
    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("# ").strip())
            continue
        m = re.match(r"^(\w+)\s*:[^#]*?(?:#\s*(.*))?$", stripped)
        if m and not stripped.startswith(("def ", "@", '"""')):
            comments[m.group(1)] = (m.group(2) or " ".join(pending)).strip()
        pending = []
    return comments


def _fmt(value: Any) -> str:
    if value is dataclasses.MISSING:
        return ""
    text = repr(value) if isinstance(value, str) else str(value)
    return f"`{text}`".replace("|", "\\|")


def config_reference() -> str:
    from tessera.config import load_params

    presets = {p: load_params(ROOT / "params.yaml", preset=p) for p in ("demo", "cpu", "gpu")}
    lines = [
        "Each section is read by one step into a typed `Config`; an unknown key is an error that names it.",
        "`demo` is `params.yaml` itself; `cpu` and `gpu` overlay `params.cpu.yaml` / `params.gpu.yaml`",
        "(`--preset cpu` on any command, or `dvc exp run -S preset=cpu`). Top-level `preset` names the",
        "overlay the DVC stages use.",
        "",
    ]
    for section, cls in _section_classes().items():
        lines += [f"### `{section}`", "", *section_table(section, cls, presets), ""]
    return "\n".join(lines).rstrip() + "\n"


def section_table(section: str, cls: type, presets: dict[str, dict[str, Any]]) -> list[str]:
    """The markdown table of one section: key, its value in each preset, its meaning."""
    lines = ["| key | demo | cpu | gpu | meaning |", "|---|---|---|---|---|"]
    comments = field_comments(cls)
    for f in dataclasses.fields(cls):
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING
            )
        )
        vals = [_fmt(presets[p].get(section, {}).get(f.name, default)) for p in ("demo", "cpu", "gpu")]
        meaning = comments.get(f.name, "").replace("|", "\\|")
        lines.append(f"| `{f.name}` | {' | '.join(vals)} | {meaning} |")
    return lines


def render_doc(text: str) -> str:
    """Fill every ``<!-- CONFIG <section> -->`` block of a docs page with that section's table."""
    from tessera.config import load_params

    sections = _section_classes()
    wanted = re.findall(r"<!-- CONFIG (\w+) -->", text)
    if not wanted:
        return text
    presets = {p: load_params(ROOT / "params.yaml", preset=p) for p in ("demo", "cpu", "gpu")}
    for section in wanted:
        body = "\n".join(section_table(section, sections[section], presets)) + "\n"
        pattern = re.compile(rf"<!-- CONFIG {section} -->.*?<!-- /CONFIG {section} -->", re.S)
        text = pattern.sub(
            lambda _m, s=section, b=body: f"<!-- CONFIG {s} -->\n{b}<!-- /CONFIG {s} -->", text, count=1
        )
    return text


def cli_reference() -> str:
    import typer.main

    from cli.main import app

    root = typer.main.get_command(app)
    lines: list[str] = []

    def walk(cmd: Any, path: list[str]) -> None:
        if hasattr(cmd, "commands"):  # a group (typer vendors its own click)
            for name in sorted(cmd.commands):
                walk(cmd.commands[name], [*path, name])
            return
        args = [p.name.upper() for p in cmd.params if p.param_type_name == "argument"]
        usage = " ".join(["[OPTIONS]", *args])
        summary = (cmd.help or "").strip().splitlines()[0] if cmd.help else ""
        lines.append(f"- `tessera {' '.join(path)} {usage}`: {summary}")
        for param in cmd.params:
            if param.param_type_name == "option" and param.name != "help":
                help_text = (param.help or "").replace("\n", " ")
                lines.append(f"  - `{'/'.join(param.opts)}`: {help_text}")

    walk(root, [])
    return (
        "Every command takes `--help`. Generated from the code by `docs/reference.py`.\n\n"
        + "\n".join(lines)
        + "\n"
    )


def render(text: str) -> str:
    blocks = {"CLI-REFERENCE": cli_reference(), "CONFIG-REFERENCE": config_reference()}
    for marker, body in blocks.items():
        pattern = re.compile(
            rf"<!-- {marker} -->.*?(?:<!-- /{marker} -->|$)"
            if f"<!-- /{marker} -->" in text
            else rf"<!-- {marker} -->",
            re.S,
        )
        text = pattern.sub(lambda _m, m=marker, b=body: f"<!-- {m} -->\n{b}<!-- /{m} -->", text, count=1)
    return text


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    pages = {README: render}
    pages.update({p: render_doc for p in sorted((ROOT / "docs").glob("*.md"))})
    stale = []
    for path, fill in pages.items():
        current = path.read_text()
        new = fill(current)
        if new != current:
            stale.append(path.relative_to(ROOT).as_posix())
            if "--check" not in argv:
                path.write_text(new)
    if stale and "--check" in argv:
        print(f"stale: {', '.join(stale)}: run `.venv/bin/python docs/reference.py`")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
