"""Curves and table of benchmarks/training/run.py results.

    python benchmarks/training/plot.py benchmarks/training/k64 --reference baseline --plateau fast_60min

Writes ``<dir>/curves.png`` (validation loss against training wall-clock, every recipe) and
``<dir>/table.md``: per recipe the parameters, seconds per step, final and best validation loss, the
training seconds to first reach the reference recipe's best validation loss, and the speed-up against
the reference (reference seconds / recipe seconds to that loss). With ``--plateau RUN`` the table also
gives each recipe's final loss relative to that (long) run's final loss.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def time_to(curve: list[dict], target: float) -> float | None:
    """Training seconds at the first evaluation with a validation loss <= target (None: never)."""
    return next((p["seconds"] for p in curve if p["val_loss"] <= target), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder")
    p.add_argument("--reference", default="baseline")
    p.add_argument("--plateau", help="a long run whose final loss stands for the plateau")
    args = p.parse_args()
    folder = Path(args.folder)
    runs = {f.stem: json.loads(f.read_text()) for f in sorted(folder.glob("*.json"))}
    ref = runs[args.reference]
    target = min(q["val_loss"] for q in ref["curve"])
    t_ref = time_to(ref["curve"], target)
    plateau = runs[args.plateau]["curve"][-1]["val_loss"] if args.plateau else None

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, r in runs.items():
        xs = [q["seconds"] / 60 for q in r["curve"]]
        ys = [q["val_loss"] for q in r["curve"]]
        ax.plot(xs, ys, marker=".", label=name)
    ax.axhline(target, color="grey", lw=0.8, ls="--", label=f"{args.reference} best")
    ax.set_xlabel(f"training wall-clock (minutes, {ref['machine']['threads']} CPU thread(s) per run)")
    ax.set_ylabel("validation loss (x0-prediction MSE)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "curves.png", dpi=120)

    head = "| recipe | parameters | s / step | minutes | final val | best val | min to reference best | speed-up |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        c = r["curve"]
        t = time_to(c, target)
        speed = f"{t_ref / t:.1f}×" if t and t_ref else "–"
        reach = f"{t / 60:.1f}" if t is not None else "never"
        row = (
            f"| {name} | {r['parameters']:,} | {r['probe_step_seconds']:.2f} | {c[-1]['seconds'] / 60:.1f} | "
            f"{c[-1]['val_loss']:.5f} | {min(q['val_loss'] for q in c):.5f} | {reach} | {speed} |"
        )
        lines.append(row)
    if plateau is not None:
        lines += ["", f"final loss / plateau ({args.plateau}: {plateau:.5f}):", ""]
        lines += [f"- {name}: {r['curve'][-1]['val_loss'] / plateau:.3f}" for name, r in runs.items()]
    (folder / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
