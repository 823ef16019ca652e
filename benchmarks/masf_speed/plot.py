"""Figures of ``benchmarks/masf_speed/run.py`` from its ``results.json``, written beside it.

    python benchmarks/masf_speed/plot.py OUT/results.json

``amortization.png``  wall clock of one assimilation run per method, split into fine-tuning, sampling and
    the rest (forecast, metrics), with the one-off pretraining as a hatched block on top; right: the speedup
    of pretrained MASF over MASF from scratch when the pretraining is shared by R runs.
``cost_vs_dim.png``   seconds of one analysis against the state dimension D = 2n², log-log, with the fitted
    power laws (exponent p in the legend; fit over the grids named in the legend).
``rmse_vs_nfe.png``   mean analysis RMSE (solid) and spread (dashed) against NFE for both MASF samplers,
    mean over seeds with the min-max range shaded, log x; right: sampling seconds per analysis.

A part missing from the results (not run, skipped, failed) is left out; nothing here raises on it.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np

LABELS = {
    "masf_bridge_pretrained": "MASF bridge\n(pretrained)",
    "masf_reference_pretrained": "MASF reference\n(pretrained)",
    "masf_bridge_scratch": "MASF bridge\n(scratch)",
    "sf_pretrained": "SF\n(pretrained)",
}
SERIES = {
    "masf_total": ("MASF analysis", "C0", "o", "-"),
    "masf_finetune": ("MASF fine-tune", "C1", "s", "--"),
    "masf_sampling": ("MASF sampling", "C2", "^", "--"),
    "letkf": ("LETKF", "C3", "D", ":"),
    "enkf": ("EnKF", "C4", "v", ":"),
}


def _title(results: dict[str, Any]) -> str:
    meta = results.get("meta", {})
    smoke = " [smoke]" if meta.get("smoke") else ""
    return f"{meta.get('device', '?')}, torch {meta.get('torch', '?')}{smoke}"


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def _save(fig: Any, path: Path) -> bool:
    """Lay out, write and close ``fig``; True (the figure was written)."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_amortization(results: dict[str, Any], path: Path) -> bool:
    part = results.get("amortization") or {}
    methods = part.get("methods") or {}
    if not methods:
        return False
    labels = [m for m in LABELS if m in methods] + [m for m in methods if m not in LABELS]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    x = np.arange(len(labels))
    parts = {"fine-tune": [], "sampling": [], "forecast + rest": [], "pretrain (once)": []}
    for m in labels:
        r = methods[m]
        ft, sa, tot = r.get("finetune_s", 0.0), r.get("sampling_s", 0.0), r.get("total_s", 0.0)
        parts["fine-tune"].append(ft)
        parts["sampling"].append(sa)
        parts["forecast + rest"].append(max(0.0, tot - ft - sa))
        parts["pretrain (once)"].append(r.get("pretrain_s", 0.0))
    bottom = np.zeros(len(labels))
    styles = {
        "fine-tune": {"color": "C1"},
        "sampling": {"color": "C2"},
        "forecast + rest": {"color": "0.7"},
        "pretrain (once)": {"color": "white", "edgecolor": "C0", "hatch": "//"},
    }
    for name, values in parts.items():
        ax.bar(x, values, 0.6, bottom=bottom, label=name, **styles[name])
        bottom += np.asarray(values)
    for xi, m in zip(x, labels, strict=True):
        r = methods[m]
        run_s = r.get("total_s", math.nan)
        txt = f"run {run_s:.1f} s\nRMSE {r.get('rmse_mean', math.nan):.3f}"
        if r.get("status") != "ok":
            txt += f"\n{r.get('status')}"
        ax.text(xi, bottom[xi], txt, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [LABELS.get(m, m) for m in labels], fontsize=8)
    ax.set_ylabel("wall clock [s]")
    ax.set_ylim(0, max(bottom.max(), 1e-9) * 1.45)
    ax.set_title("one assimilation run (+ one-off pretraining)", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", ncol=4)

    speed = part.get("speedup") or {}
    if speed:
        r_ticks: set[int] = set()
        for i, (key, entry) in enumerate(speed.items()):
            name = "bridge" if key.startswith("masf_bridge") else "reference"
            flag = "" if entry.get("all_ok", True) else ", NOT OK"
            for basis, ls in (("total", "-"), ("analysis", "--")):
                amort = entry.get(basis, {}).get("amortized", {})
                if not amort:
                    continue
                rs = sorted(amort, key=int)
                r_ticks.update(int(r) for r in rs)
                ax2.plot(
                    [int(r) for r in rs],
                    [amort[r] for r in rs],
                    ls,
                    marker="o",
                    color=f"C{i}",
                    label=f"{name} pretrained, {basis} wall clock (per run {entry[basis]['per_run']:.1f}x{flag})",
                )
        ax2.axhline(1.0, color="0.5", lw=0.8)
        ax2.set_xscale("log")
        ax2.set_xticks(sorted(r_ticks), [str(r) for r in sorted(r_ticks)])
        ax2.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax2.set_xlabel("runs R sharing one pretraining")
        ax2.set_ylabel("speedup  R·t_scratch / (t_pretrain + R·t_pretrained)")
        ax2.legend(fontsize=7)
        ax2.set_title("speedup over MASF bridge from scratch", fontsize=10)
    else:
        ax2.text(0.5, 0.5, "speedup needs the scratch and\na pretrained MASF run", ha="center", va="center")
        ax2.set_axis_off()
    setting = part.get("setting", {})
    n = setting.get("system", {}).get("n", "?")
    fig.suptitle(f"Amortization, Kolmogorov {n}², N = {setting.get('members', '?')}; {_title(results)}")
    return _save(fig, path)


def plot_cost(results: dict[str, Any], path: Path) -> bool:
    part = results.get("cost") or {}
    grids = sorted((part.get("grids") or {}).values(), key=lambda r: r["n"])
    if not grids:
        return False
    fits = part.get("fits") or {}
    fig, ax = plt.subplots(figsize=(7, 5))
    for key, (name, color, marker, ls) in SERIES.items():
        method, field = ("masf", key.split("_", 1)[1] + "_s") if key.startswith("masf") else (key, "total_s")
        pts = [(r["D"], r[method][field]) for r in grids if method in r and _finite(r[method].get(field))]
        pts = [(d, s) for d, s in pts if s > 0]
        if not pts:
            continue
        d, s = np.array(pts).T
        fit_entry = fits.get(key) or {}
        fit = fit_entry.get(fit_entry.get("preferred", "all"))
        label = name
        if fit:
            label += f": p = {fit['p']:.2f} (n = {min(fit['grids'])}..{max(fit['grids'])})"
            if fit_entry.get("preferred") == "large" and fit_entry.get("all"):
                label += f"; all n: {fit_entry['all']['p']:.2f}"
            dd = np.array([2 * g * g for g in fit["grids"]], dtype=float)
            ax.plot(dd, np.exp(fit["log_c"]) * dd ** fit["p"], ls, color=color, lw=1)
        ax.plot(d, s, marker, color=color, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([r["D"] for r in grids], [f"{r['D']}\n({r['n']}²)" for r in grids], fontsize=7)
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("state dimension D = 2n²")
    ax.set_ylabel("seconds per analysis")
    setting = part.get("setting", {})
    ax.set_title(
        f"One analysis, N = {setting.get('members', '?')}, nfe {setting.get('nfe', '?')}, "
        f"{setting.get('finetune_epochs', '?')} fine-tune epochs\n{_title(results)}",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def plot_nfe(results: dict[str, Any], path: Path) -> bool:
    part = results.get("nfe") or {}
    summary = part.get("summary") or {}
    if not any(summary.values()):
        return False
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, (sampler, rows) in enumerate(sorted(summary.items())):
        if not rows:
            continue
        color = f"C{i}"
        nfe = np.array([r["nfe"] for r in rows], dtype=float)
        mean = np.array([r["rmse_mean"] for r in rows])
        lo = np.array([r["rmse_min"] for r in rows])
        hi = np.array([r["rmse_max"] for r in rows])
        spread = np.array([r["spread_mean"] for r in rows])
        seeds = max(len(r["seeds"]) for r in rows)
        ax.plot(nfe, mean, "o-", color=color, label=f"{sampler}: RMSE ({seeds} seeds)")
        bad = np.array([r.get("not_ok", 0) > 0 for r in rows])
        if bad.any():
            ax.plot(nfe[bad], mean[bad], "o", ms=11, mfc="none", color="red")
        ax.fill_between(nfe, lo, hi, color=color, alpha=0.2)
        ax.plot(nfe, spread, "x--", color=color, label=f"{sampler}: spread")
        ax2.plot(nfe, [r["sampling_s_per_analysis"] for r in rows], "o-", color=color, label=sampler)
    ticks = sorted({r["nfe"] for rows in summary.values() for r in rows})
    for a in (ax, ax2):
        a.set_xscale("log")
        a.set_xticks(ticks, [str(t) for t in ticks])
        a.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_yscale("log")
    ax.set_xlabel("NFE (denoiser evaluations per analysis)")
    ax.set_ylabel("mean analysis RMSE / spread (red ring: a seed not ok)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax2.set_yscale("log")
    ax2.set_xlabel("NFE")
    ax2.set_ylabel("sampling seconds per analysis")
    ax2.legend(fontsize=8)
    ax2.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"MASF RMSE against NFE; {_title(results)}", fontsize=10)
    return _save(fig, path)


def make_plots(results_path: str | Path) -> list[Path]:
    """Write the figures beside ``results_path``; returns the paths written."""
    results_path = Path(results_path)
    results = json.loads(results_path.read_text())
    written = []
    for name, fn in (
        ("amortization.png", plot_amortization),
        ("cost_vs_dim.png", plot_cost),
        ("rmse_vs_nfe.png", plot_nfe),
    ):
        out = results_path.with_name(name)
        try:
            if fn(results, out):
                written.append(out)
            else:
                print(f"plot: {name} skipped (no data)", flush=True)
        except Exception as err:  # a broken figure must not hide the others
            plt.close("all")
            print(f"plot: {name} failed: {type(err).__name__}: {err}", flush=True)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", type=Path, help="results.json of run.py")
    args = parser.parse_args()
    for path in make_plots(args.results):
        print(path)


if __name__ == "__main__":
    main()
