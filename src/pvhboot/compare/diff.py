"""The diff engine: fingerprints of the paths of one cell configuration, field by field.

Input: cell records (``{"path", "cpus", "memory", "fault", "status", "fingerprint", ...}``, the
shape `--json` writes) and optionally a baseline's records, whose paths join each group as
``baseline:<path>`` columns.  Output: per (vCPUs, memory) group the columns, the rows that differ
(or are always shown), each classed:

* ``finding``: a must-equal field differs, or a path did not boot (its crash report is kept);
* ``allowed``: the field may differ, the rule's reason is carried with the row;
* ``explained``: every path agrees, but the field is always shown (the KASLR state);

and the count of fields equal on every path.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .rules import ALLOWED, FieldRule, classify

FINDING, ALLOWED_ROW, EXPLAINED = "finding", "allowed", "explained"
BOOT_FIELD = "boot status"


@dataclass
class Row:
    field: str
    kind: str  # FINDING | ALLOWED_ROW | EXPLAINED
    values: dict[str, str | None]  # column -> value (None: the path does not have the field)
    reason: str = ""
    rule: str = ""  # the pattern of the rule that classed it ("" for the default must-equal)

    def to_json(self) -> dict:
        return {"field": self.field, "kind": self.kind, "reason": self.reason, "rule": self.rule,
                "values": self.values}


@dataclass
class Group:
    cpus: int
    memory: int
    columns: list[str]
    faults: dict[str, str] = field(default_factory=dict)  # column -> seeded fault
    rows: list[Row] = field(default_factory=list)
    equal: int = 0
    failed: dict[str, dict] = field(default_factory=dict)  # column -> the record of a path that did not boot

    @property
    def findings(self) -> list[Row]:
        return [r for r in self.rows if r.kind == FINDING]

    def to_json(self) -> dict:
        return {"cpus": self.cpus, "memory": self.memory, "columns": self.columns, "faults": self.faults,
                "equal_fields": self.equal, "rows": [r.to_json() for r in self.rows]}


def column_name(record: dict, prefix: str = "") -> str:
    return prefix + record["path"]


def compare_records(records: list[dict], rules: tuple[FieldRule, ...],
                    baseline: list[dict] | None = None) -> list[Group]:
    groups: dict[tuple[int, int], Group] = {}
    members: dict[tuple[int, int], dict[str, dict]] = {}
    for prefix, recs in (("", records), ("baseline:", baseline or [])):
        for rec in recs:
            key = (rec["cpus"], rec["memory"])
            if prefix and key not in {(r["cpus"], r["memory"]) for r in records}:
                continue  # a baseline cell with no counterpart in this run
            g = groups.setdefault(key, Group(rec["cpus"], rec["memory"], []))
            col = column_name(rec, prefix)
            g.columns.append(col)
            members.setdefault(key, {})[col] = rec
            if rec.get("fault"):
                g.faults[col] = rec["fault"]
    out = []
    for key in sorted(groups):
        g = groups[key]
        _diff_group(g, members[key], rules)
        out.append(g)
    return out


def _diff_group(g: Group, recs: dict[str, dict], rules: tuple[FieldRule, ...]) -> None:
    booted = {c: r for c, r in recs.items() if r.get("status") == "ok"}
    if len(booted) < len(recs):
        g.failed = {c: r for c, r in recs.items() if c not in booted}
        g.rows.append(Row(BOOT_FIELD, FINDING, {c: _status_text(r) for c, r in recs.items()},
                          "a path that does not boot (or prints no fingerprint) is a finding"))
    names: dict[str, None] = {}
    for r in booted.values():
        names.update(dict.fromkeys(r["fingerprint"]))
    fps = {c: r["fingerprint"] for c, r in booted.items()}
    protocols = {c: r.get("protocol") for c, r in booted.items()}
    for name in names:
        values = {c: fp.get(name) for c, fp in fps.items()}
        rule = classify(name, rules)
        same = len(set(values.values())) <= 1
        if same and not (rule and rule.always_show):
            g.equal += 1
        elif same:
            g.rows.append(Row(name, EXPLAINED, values, rule.reason, rule.pattern))
        elif rule and rule.allows(values, fps, protocols):
            g.rows.append(Row(name, ALLOWED_ROW, values, rule.reason, rule.pattern))
        elif rule and rule.kind == ALLOWED:
            g.rows.append(Row(name, FINDING, values, "not the difference this rule allows: " + rule.reason,
                              rule.pattern))
        else:
            g.rows.append(Row(name, FINDING, values, rule.reason if rule else "", rule.pattern if rule else ""))


def _status_text(rec: dict) -> str:
    status = rec.get("status", "error")
    if status == "ok":
        return "ok"
    detail = rec.get("detail") or (rec.get("exit") or {}).get("reason") or ""
    return f"{status}: {detail}" if detail and detail != status else status


def count_findings(groups: list[Group]) -> int:
    return sum(len(g.findings) for g in groups)
