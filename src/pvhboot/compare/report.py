"""The human output of `pvhboot compare`: one rich table per cell configuration, paths as columns,
only the differing (or always-shown) fields as rows, the equal-field count below, then the crash
report of every path that did not boot.

Guest text (command lines, kernel log lines, crash reports) is put in :class:`rich.text.Text`, never
parsed as console markup, so a guest printing ``[bold]`` or ``[/]`` cannot restyle or break the
output.
"""
from __future__ import annotations

from .diff import ALLOWED_ROW, EXPLAINED, FINDING, Group

MAX_CELL_LINES = 12  # a memory map or iomem value is shown up to this many lines
SET_TOKENS = 8  # a value of more words than this (a CPU's flags) is shown as what it has beyond the rest
COLLAPSE_ROWS = 4  # more allowed rows than this under one rule become one row (every value is in --json)
ORDER = {FINDING: 0, ALLOWED_ROW: 1, EXPLAINED: 2}  # findings first (stable within a class)
KIND_STYLE = {FINDING: "bold red", ALLOWED_ROW: "yellow", EXPLAINED: "cyan"}


def format_memory(n: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def group_title(g: Group) -> str:
    return f"{g.cpus} vCPU{'s' if g.cpus != 1 else ''}, {format_memory(g.memory)}"


def shown_values(values: dict[str, str | None]) -> dict[str, str | None]:
    """What a row shows per column: a long line (a flag set) or a multi-line value (a memory map) as
    only the words or lines not every column has, after how many they share."""
    present = [v for v in values.values() if v is not None]
    if len(present) < 2:
        return values
    if all("\n" in v for v in present):
        split, join, unit = (lambda v: v.split("\n")), "\n".join, "lines"
    elif all(len(v.split()) > SET_TOKENS for v in present):
        split, join, unit = str.split, " ".join, "words"
    else:
        return values
    common = set.intersection(*(set(split(v)) for v in present))
    return {c: None if v is None else
            f"[{len(common)} common {unit}]" + ("\n" if unit == "lines" else " ")
            + join(t for t in split(v) if t not in common) for c, v in values.items()}


def collapse(rows: list) -> list:
    """Allowed rows of one rule, when there are many (26 setup-header fields), as one row."""
    from .diff import Row

    by_rule: dict[str, list] = {}
    for r in rows:
        if r.kind == ALLOWED_ROW:
            by_rule.setdefault(r.rule, []).append(r)
    out = []
    for r in rows:
        same = by_rule.get(r.rule, []) if r.kind == ALLOWED_ROW else []
        if len(same) <= COLLAPSE_ROWS:
            out.append(r)
        elif r is same[0]:
            out.append(Row(f"{r.rule} ({len(same)} fields)", ALLOWED_ROW,
                           {c: "(values in --json)" if i == 0 else "" for i, c in enumerate(r.values)},
                           r.reason, r.rule))
    return out


def _cell_text(value: str | None):
    from rich.text import Text

    if value is None:
        return Text("(absent)", style="dim")
    lines = value.split("\n")
    if len(lines) > MAX_CELL_LINES:
        lines = lines[:MAX_CELL_LINES] + [f"... {len(lines) - MAX_CELL_LINES} more lines (--json)"]
    return Text("\n".join(lines))


def print_report(groups: list[Group], console=None, show_reasons: bool = True) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    for g in groups:
        table = Table(title=Text(group_title(g)), show_lines=True, title_justify="left")
        table.add_column("field", overflow="fold", min_width=12)
        for col in g.columns:
            head = col + (f"\n(seeded fault: {g.faults[col]})" if col in g.faults else "")
            table.add_column(Text(head), overflow="fold")
        table.add_column("class", no_wrap=True)
        notes: dict[str, int] = {}  # reason -> footnote number, each reason printed once below
        for row in sorted(collapse(g.rows), key=lambda r: ORDER[r.kind]):
            label = Text(row.kind, style=KIND_STYLE[row.kind])
            if show_reasons and row.reason:
                n = notes.setdefault(row.reason, len(notes) + 1)
                label.append(f" [{n}]")
            shown = shown_values(row.values)
            table.add_row(Text(row.field), *(_cell_text(shown.get(c)) for c in g.columns), label)
        if g.rows:
            console.print(table)
            for reason, n in notes.items():
                console.print(Text(f"[{n}] {reason}", style="dim"))
        else:
            console.print(Text(f"{group_title(g)}: {', '.join(g.columns)}: no difference", style="green"))
        findings = len(g.findings)
        summary = Text(f"{g.equal} fields equal on every path; ")
        summary.append(f"{findings} finding{'s' if findings != 1 else ''}",
                       style="bold red" if findings else "green")
        allowed = sum(1 for r in g.rows if r.kind == ALLOWED_ROW)
        if allowed:
            summary.append(f"; {allowed} allowed difference{'s' if allowed != 1 else ''} (reasons below the table)")
        console.print(summary)
        for col, rec in g.failed.items():
            console.print(Text(f"\n{col} ({group_title(g)}) did not boot: {rec.get('status')}", style="bold red"))
            text = rec.get("crash_report") or rec.get("detail") or ""
            if rec.get("stderr"):
                text += "\n" + rec["stderr"]
            if not rec.get("crash_report") and rec.get("console_tail"):
                text += "\nlast console lines:\n" + rec["console_tail"]
            console.print(Text(text.rstrip()), soft_wrap=True)  # a crash report keeps its own lines
            later = (rec.get("failures") or [])[1:]  # booted again (--retries): how each later try ended
            for n, head in enumerate(later, 2):
                console.print(Text(f"attempt {n} of {rec.get('attempts')}:\n  " + head.replace("\n", "\n  ")),
                              soft_wrap=True)
        console.print()


def print_flaky(records: list[dict], console=None) -> None:
    """Cells that crashed or timed out once and booted when tried again (engine.run_cells)."""
    from rich.console import Console
    from rich.text import Text

    flaky = [r for r in records if r.get("flaky")]
    if not flaky:
        return
    console = console or Console()
    for r in flaky:
        heads = r.get("failures") or [r["flaky"]]
        times = "once" if len(heads) == 1 else f"{len(heads)} times"
        console.print(Text(f"{r['path']} ({r['cpus']} vCPU, {r['memory'] >> 20} MiB) failed {times} and booted "
                           "when tried again: flaky, not a difference between paths. "
                           f"The failed attempt{'s' if len(heads) > 1 else ''}:", style="yellow"))
        for head in heads:
            console.print(Text("  " + head.replace("\n", "\n  ")), soft_wrap=True)
