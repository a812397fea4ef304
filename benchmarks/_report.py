"""Outputs: markdown tables (``results.md``, also printed), ``results.json`` (every
figure with its ratio to the mux floor) and PNG plots (matplotlib, Agg)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ._common import FLOOR_NAME, Row, Section

if TYPE_CHECKING:
    from pathlib import Path

    from ._common import Leftover


def _cell(value: float | None, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def _ratio_cell(value: float | None, floor: float | None) -> str:
    if value is None or floor is None or not floor or math.isnan(value):
        return "-"
    return f"{value / floor:.2f}x"


def table(section: Section, order: list[str]) -> str:
    """The section as a markdown table, rows by group then implementation."""
    head = ["implementation", section.group_header]
    for col in section.columns:
        head.append(col.header)
        if col.ratio:
            head.append("vs floor")
    head.append("remark")
    lines = [
        f"### {section.title}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(" --- " for _ in head) + "|",
    ]
    groups = list(dict.fromkeys(row.group for row in section.rows))
    rank = {name: i for i, name in enumerate(order)}
    for group in groups:
        floor = section.floor_for(group)
        rows = [r for r in section.rows if r.group == group]
        rows.sort(key=lambda r: rank.get(r.impl, len(rank)))
        for row in rows:
            cells = [row.impl, group]
            for col in section.columns:
                value = None if row.error else row.values.get(col.key)
                cells.append(_cell(value, col.fmt))
                if col.ratio:
                    base = floor.values.get(col.key) if floor else None
                    cells.append(_ratio_cell(value, base))
            cells.append(row.error or row.remark)
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {note}" for note in section.notes]
    lines.append(f"- ({section.seconds:.0f} s)")
    return "\n".join(lines) + "\n"


def impl_table(impls: list[dict[str, Any]]) -> str:
    lines = [
        "### Implementations",
        "",
        "| implementation | how it runs | version | status |",
        "| --- | --- | --- | --- |",
    ]
    for impl in impls:
        status = impl["unavailable"] or "ran"
        lines.append(
            f"| {impl['name']} | {impl['note']} | {impl['version'] or '-'} | {status} |"
        )
    return "\n".join(lines) + "\n"


def leftover_table(leftovers: list[Leftover]) -> str:
    lines = ["### Keys left on the nodes after a run", ""]
    if not leftovers:
        return "\n".join([*lines, "None: every run left every node empty.", ""])
    lines += [
        "| scenario | implementation | keys per node | still there after |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {x.scenario} | {x.impl} | {x.keys_per_node} | {x.settled_after_s} s |"
        for x in leftovers
    ]
    return "\n".join([*lines, ""])


def machine_block(machine: dict[str, Any]) -> str:
    parts = [f"{k}: {v}" for k, v in machine.items() if k != "versions"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    return "- " + "\n- ".join([*parts, f"versions: {versions}"]) + "\n"


def write_json(
    path: Path,
    machine: dict[str, Any],
    plan: dict[str, Any],
    impls: list[dict[str, Any]],
    sections: list[Section],
    leftovers: list[Leftover],
) -> None:
    def rows(section: Section) -> list[dict[str, Any]]:
        return [r.as_json(section.floor_for(r.group)) for r in section.rows]

    data = {
        "machine": machine,
        "plan": plan,
        "floor": FLOOR_NAME,
        "implementations": impls,
        "scenarios": {
            s.key: {
                "title": s.title,
                "group": s.group_header,
                "seconds": round(s.seconds, 1),
                "rows": rows(s),
                "notes": s.notes,
                "derived": s.derived,
            }
            for s in sections
        },
        "leftovers": [asdict(x) for x in leftovers],
    }
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def plots(out: Path, sections: list[Section], order: list[str]) -> list[Path]:
    """PNG plots of the sections that ran; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_key = {s.key: s for s in sections}
    written: list[Path] = []

    def ok(rows: list[Row], key: str) -> list[Row]:
        rows = [r for r in rows if r.error is None and r.values.get(key) is not None]
        return sorted(
            rows, key=lambda r: order.index(r.impl) if r.impl in order else 99
        )

    if (s := by_key.get("latency")) is not None:
        fig, ax = plt.subplots(figsize=(8, 5))
        for name in order:
            rows = [r for r in ok(s.rows, "p50_us") if r.impl == name]
            if rows:
                xs = [int(r.group) for r in rows]
                ys = [r.values["p50_us"] or 0.0 for r in rows]
                ax.plot(xs, ys, marker="o", label=name)
        ax.set(
            xlabel="nodes (N)",
            ylabel="acquire+release p50 (µs)",
            title="Uncontended latency vs N",
            xticks=[1, 3, 5, 7],
        )
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save(fig, out / "latency_vs_n.png"))

    if (s := by_key.get("throughput")) is not None:
        rows = ok(s.rows, "locks_per_s")
        fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.5))
        names = [r.impl for r in rows][::-1]
        vals = [r.values["locks_per_s"] or 0.0 for r in rows][::-1]
        ax.barh(names, vals, color="tab:blue")
        for y, v in enumerate(vals):
            ax.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
        ax.set(xlabel="locks/s (acquire+release)", title=s.title.split(": ", 1)[-1])
        written.append(_save(fig, out / "throughput.png"))

    if (s := by_key.get("contention")) is not None:
        rows = ok(s.rows, "handoff_p50_ms")
        written.append(
            _grouped(
                plt,
                rows,
                [("handoff_p50_ms", "p50"), ("handoff_p99_ms", "p99")],
                "handoff latency (ms, log)",
                "Contention handoff, 16 workers, N=3",
                out / "handoff.png",
                log=True,
            )
        )

    if (s := by_key.get("slow_node")) is not None:
        rows = ok(s.rows, "slow_acquire_p50_ms")
        written.append(
            _grouped(
                plt,
                rows,
                [
                    ("acquire_p50_ms", "normal"),
                    ("slow_acquire_p50_ms", "one slow node"),
                ],
                "acquire p50 (ms)",
                "Acquire latency with one node +50 ms, N=3",
                out / "slow_node.png",
                log=False,
            )
        )
    return written


def _grouped(
    plt: Any,
    rows: list[Row],
    series: list[tuple[str, str]],
    ylabel: str,
    title: str,
    path: Path,
    *,
    log: bool,
) -> Path:
    fig, ax = plt.subplots(figsize=(9, 5))
    width = 0.8 / len(series)
    for i, (key, label) in enumerate(series):
        xs = [j + i * width for j in range(len(rows))]
        ax.bar(xs, [r.values.get(key) or 0.0 for r in rows], width, label=label)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(rows))])
    ax.set_xticklabels([r.impl for r in rows], rotation=30, ha="right", fontsize=8)
    if log:
        ax.set_yscale("log")
    ax.set(ylabel=ylabel, title=title)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
