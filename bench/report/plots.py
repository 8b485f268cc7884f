"""PNG figures for the report, drawn with matplotlib's Agg backend (no display needed).

Every figure is drawn from the configs table (means and t-based 95 % CIs), like the report's
tables: throughput and TTFT by model with CI bars, multi-agent speedup by scenario, and the
power/throughput frontier when power data exists. The capacity figure is drawn from the capacity
search's finding (bench/analysis/findings.py search_capacity): the interval each probed point's
verdict read (at its Bonferroni-split level, which the legend states).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless hosts have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.core import metrics
from bench.report.outputs import StudyOutputs  # noqa: E402

PLOTS_DIR = "plots"
FIGURES = ("throughput", "ttft", "speedup", "frontier", "capacity")  # write_plots' names, in the report's order


def _ci_errors(df: pd.DataFrame, metric: str) -> np.ndarray:
    """Asymmetric error bars (mean − low, high − mean); 0 where a config has no CI (n < 2)."""
    mean = df[f"{metric}_mean"].astype(float)
    low = df[f"{metric}_ci95_low"].astype(float).fillna(mean)
    high = df[f"{metric}_ci95_high"].astype(float).fillna(mean)
    return np.vstack([(mean - low).to_numpy(), (high - mean).to_numpy()])


def _grouped_bars(ax, df: pd.DataFrame, metric: str, group_col: str, models: list[str]) -> None:
    groups = sorted(df[group_col].unique())
    width = 0.8 / max(len(models), 1)
    x = np.arange(len(groups))
    for i, model in enumerate(models):
        sub = df[df["model"] == model].set_index(group_col).reindex(groups)
        present = sub[f"{metric}_mean"].notna().to_numpy()
        if not present.any():
            continue
        sub = sub[present]
        ax.bar(x[present] + (i - (len(models) - 1) / 2) * width, sub[f"{metric}_mean"].astype(float), width,
               yerr=_ci_errors(sub, metric), capsize=4, label=model)
    ax.set_xticks(x, groups, rotation=15, ha="right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def _by_lang_figure(df: pd.DataFrame, metric: str, group_col: str, ylabel: str, title: str, path: Path,
                    hlines: tuple[float, ...] = (), note: str = "") -> Path | None:
    if df.empty or f"{metric}_mean" not in df or df[f"{metric}_mean"].isna().all():
        return None
    langs = [lang for lang in ("python", "rust") if (df["lang"] == lang).any()]
    models = sorted(df["model"].unique())
    fig, axes = plt.subplots(1, len(langs), figsize=(5.5 * len(langs), 4), squeeze=False, sharey=True)
    for ax, lang in zip(axes[0], langs):
        _grouped_bars(ax, df[df["lang"] == lang], metric, group_col, models)
        for y in hlines:
            ax.axhline(y, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(f"{lang}")
        ax.set_ylabel(ylabel)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{title}\nbars: mean · whiskers: 95 % CI of the mean{note}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_frontier(frontier: pd.DataFrame, path: Path) -> Path | None:
    """Tokens/J against served tok/s, one panel per suite, the Pareto frontier drawn as a line."""
    if frontier.empty:
        return None
    suites = [s for s in ("single", "multi") if (frontier["suite"] == s).any()]
    fig, axes = plt.subplots(1, len(suites), figsize=(5.5 * len(suites), 4.5), squeeze=False)
    for ax, suite in zip(axes[0], suites):
        df = frontier[frontier["suite"] == suite]
        for (model, lang), g in df.groupby(["model", "lang"]):
            ax.scatter(g["served_tps_mean"], g["tokens_per_j_mean"], label=f"{model} ({lang})",
                       marker="o" if lang == "python" else "s")
        front = df[df["pareto"]].sort_values("served_tps_mean")
        ax.plot(front["served_tps_mean"], front["tokens_per_j_mean"], color="black", linewidth=0.8,
                label="frontier")
        ax.set_xlabel(f"{metrics.label('served_tps', suite)} (mean per config)")
        ax.set_ylabel(metrics.label("tokens_per_j", suite))
        ax.set_title(f"{suite}-agent")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Energy efficiency vs throughput (one point per config)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_capacity(searches: list[dict], path: Path) -> Path | None:
    """Goodput against the agent count, one panel per capacity search: each probed point's goodput
    with the interval its verdict read as a band (labelled with that interval's level), the SLO's
    goodput target as a dashed line, the capacity found marked."""
    searches = [s for s in searches if s["probes"]]
    if not searches:
        return None
    fig, axes = plt.subplots(1, len(searches), figsize=(max(6.0, 4.5 * len(searches)), 4.2), squeeze=False,
                             sharey=True)
    for ax, s in zip(axes[0], searches):
        pts = sorted((p for p in s["probes"] if p["goodput"] is not None), key=lambda p: p["n"])
        n = [p["n"] for p in pts]
        # the interval the search's verdict read (findings.verdict_interval_label), not goodput.csv's plain one
        ax.fill_between(n, [100 * p["low"] for p in pts], [100 * p["high"] for p in pts], alpha=0.25,
                        label=s.get("interval_label") or "verdict interval")
        ax.plot(n, [100 * p["goodput"] for p in pts], marker="o", label="goodput (probed points)")
        ax.axhline(100 * s["target"], color="grey", linestyle="--", linewidth=0.8,
                   label=f"SLO target {100 * s['target']:.0f} %")
        if s["capacity"]:
            ax.axvline(s["capacity"], color="green", linewidth=1.2, label=f"capacity {s['capacity']}")
        ax.set_xticks(range(1, s["max_agents"] + 1))
        ax.set_xlim(0.5, s["max_agents"] + 0.5)
        ax.set_ylim(0, 105)
        ax.set_xlabel("agents at once")
        ax.set_title(f"{s['model']} ({s['lang']})\n{s.get('server_settings') or ''}", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metrics.label("goodput_pct", "steps"))
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Capacity search: goodput vs agents\nband: the interval each verdict read (its level in the "
                 "legend) · counts the search skipped are left out", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(study_root: Path, configs: pd.DataFrame, frontier: pd.DataFrame,
                searches: list[dict] = ()) -> dict[str, str]:
    """Draw every figure that has data; returns name → path relative to the study folder."""
    out_dir = study_root / PLOTS_DIR
    if not configs.empty:  # a downgraded config is its own group: its bars are not what the others ran
        configs = configs.assign(**{col: [f"{v} (ran {r})" if r else v for v, r in zip(configs[col], configs["ran_as"])]
                                    for col in ("config", "scenario")})
    single = configs[configs["suite"] == "single"] if not configs.empty else configs
    multi = configs[configs["suite"] == "multi"] if not configs.empty else configs
    made = {
        "throughput": _by_lang_figure(single, "decode_tps", "config", metrics.label("decode_tps", "single"),
                                      "Single-agent throughput by model", out_dir / "throughput.png"),
        "ttft": _by_lang_figure(single, "ttft_ms", "config", metrics.label("ttft_ms", "single"),
                                "Single-agent TTFT by model", out_dir / "ttft.png"),
        "speedup": _by_lang_figure(multi, "speedup", "scenario", metrics.label("speedup", "multi"),
                                   "Multi-agent speedup by scenario", out_dir / "speedup.png", hlines=(1.0, 2.0),
                                   note=" · dashed: 1× (no gain), 2× (ideal)"),
        "frontier": plot_frontier(frontier, out_dir / "frontier.png"),
        "capacity": plot_capacity(list(searches), out_dir / "capacity.png"),
    }
    # Remove figures of an earlier report that this data no longer supports.
    for name, path in made.items():
        if path is None:
            (out_dir / f"{name}.png").unlink(missing_ok=True)
    return {name: f"{PLOTS_DIR}/{path.name}" for name, path in made.items() if path is not None}


def figures(study_root: Path) -> dict[str, str]:
    """The figures write_plots drew (it removes those the data no longer supports): name → path
    relative to the study folder, in the report's order."""
    return {name: f"{PLOTS_DIR}/{name}.png" for name in FIGURES if (study_root / PLOTS_DIR / f"{name}.png").is_file()}


def export(out: StudyOutputs) -> list[Path]:
    """plots/*.png of the study."""
    drawn = write_plots(out.store.root, out.results.configs, out.results.derived["frontier"],
                        (out.results.findings or {}).get("capacity_search", []))
    return [out.store.root / rel for rel in drawn.values()]
