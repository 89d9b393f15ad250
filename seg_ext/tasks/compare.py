"""Compare finished runs: the final val and test metrics of each setting as mean ± standard deviation over its
seeds, the settings that differ between runs as columns, validation curves overlaid and a bar chart with the
spread over seeds. ``tools/compare.py`` and ``tools/sweep.py`` call :func:`compare_runs`.

A *setting* is what the runs' configs say apart from ``train.seed``: runs whose configs differ only in the seed are
repetitions of one setting.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from seg_ext.errors import ConfigError, SegExtError
from seg_ext.io import atomic_write_text
from seg_ext.report import fmt

SEED_KEY = "train.seed"


@dataclass
class RunRecord:
    """One finished run folder: its flattened config, final metrics and per-epoch history."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def seed(self) -> Any:
        return self.config.get(SEED_KEY)


def flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (lists kept as values)."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def is_run(folder: Path) -> bool:
    return (folder / "metrics.json").is_file() and (folder / "config.yaml").is_file()


def find_runs(paths: Iterable[str | Path]) -> list[RunRecord]:
    """The finished runs named: run folders, or folders holding run folders at any depth (a sweep).

    Raises:
        SegExtError: a path that does not exist, or a folder that is neither a run nor holds one.
    """
    runs: list[RunRecord] = []
    for path in map(Path, paths):
        if not path.exists():
            raise SegExtError(f"{path} does not exist; expected a run folder or a folder of runs (a sweep)")
        if not path.is_dir():
            raise SegExtError(f"{path} is a file; expected a run folder (with metrics.json and config.yaml) or a sweep folder")
        folders = [path] if is_run(path) else sorted(p.parent for p in path.rglob("metrics.json") if is_run(p.parent))
        if not folders:
            raise SegExtError(f"{path} is not a run: it has no metrics.json and config.yaml (a finished run's files), "
                              "nor any run folder inside")
        runs.extend(read_run(folder) for folder in folders)
    return runs


def read_run(folder: Path) -> RunRecord:
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
        config = yaml.safe_load((folder / "config.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise SegExtError(f"cannot read the run in {folder} ({exc.__class__.__name__}); expected the metrics.json and "
                          "config.yaml a run writes") from None
    if not isinstance(metrics, dict) or not isinstance(config, dict):
        raise SegExtError(f"{folder} holds a metrics.json or config.yaml that is not a mapping; expected a run's files")
    history = []
    if (folder / "metrics.jsonl").is_file():
        history = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    try:  # a run saved before a config key existed is compared at that key's default
        from seg_ext.methods import upgrade

        config = upgrade(config)
    except (ConfigError, KeyError, TypeError):
        pass  # not a config this version knows: compared as written
    return RunRecord(folder, flatten(config), metrics, history)


def differing_keys(runs: Sequence[RunRecord]) -> list[str]:
    """Config keys whose values differ between the runs, apart from the seed, in config order."""
    keys: list[str] = []
    for run in runs:
        keys.extend(k for k in run.config if k not in keys)
    return [k for k in keys if k != SEED_KEY and len({_word(r.config.get(k)) for r in runs}) > 1]


def _word(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def table_metrics(runs: Sequence[RunRecord]) -> list[str]:
    """The metric keys of the table: the comparison columns every registered evaluator declares for these
    metrics (``Evaluator.comparison_keys``: mIoU and mAP with the object class of two-class semantic data; mask
    and box AP)."""
    from seg_ext.evaluation import comparison_keys

    return comparison_keys(runs[0].metrics.get("val", {}))


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (NaN for one value) and count of the finite values."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return math.nan, math.nan, 0
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else math.nan, len(finite)


@dataclass
class Setting:
    values: dict[str, Any]  # the differing keys' values
    runs: list[RunRecord]
    stats: dict[str, tuple[float, float, int]] = field(default_factory=dict)  # "val mIoU" -> (mean, std, n)

    @property
    def label(self) -> str:
        return ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in self.values.items()) or "all runs"


def _short(value: Any) -> str:
    return json.dumps(value).replace(" ", "") if isinstance(value, (list, dict)) or value is None else str(value)


def group_settings(runs: Sequence[RunRecord], metrics: Sequence[str]) -> tuple[list[str], list[Setting]]:
    """The differing keys and the runs grouped by their values (in order of first appearance), each group's
    mean ± std over seeds of every ``split metric`` and of the training time."""
    keys = differing_keys(runs)
    groups: dict[str, Setting] = {}
    for run in runs:
        values = {k: run.config.get(k) for k in keys}
        groups.setdefault(_word(values), Setting(values, [])).runs.append(run)
    for setting in groups.values():
        for split in ("val", "test"):
            for name in metrics:
                setting.stats[f"{split} {name}"] = mean_std([r.metrics.get(split, {}).get(name, math.nan) for r in setting.runs])
        setting.stats["train s"] = mean_std([r.metrics.get("train_seconds", math.nan) for r in setting.runs])
    return keys, list(groups.values())


def _cell(stat: tuple[float, float, int], best: bool) -> str:
    mean, std, n = stat
    if n == 0:
        return "n/a"
    text = fmt(mean) + (f" ± {fmt(std)}" if n > 1 else "")
    return f"**{text}**" if best else text


def compare_runs(paths: Iterable[str | Path], output: str | Path, title: str = "Comparison") -> dict[str, Any]:
    """Write the comparison of the runs under ``paths`` to ``output`` (markdown, plots beside it with the same
    stem, and the numbers as ``<stem>.json``); return those numbers.

    Raises:
        SegExtError: a path is not a run or a folder of runs.
    """
    return write_comparison(find_runs(paths), output, title)


def write_comparison(runs: Sequence[RunRecord], output: str | Path, title: str = "Comparison",
                     metrics: Sequence[str] | None = None, what: str = "the final metrics of each run's best checkpoint"
                     ) -> dict[str, Any]:
    """The comparison of ``compare_runs`` for runs already read (or made up of evaluations: ``tasks.tune``);
    ``metrics``: the metric names of the table (default: the task's main ones); splits absent from every run's
    metrics, and the training time when no run has one, get no column."""
    metrics = list(metrics or table_metrics(runs))
    keys, settings = group_settings(runs, metrics)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    splits = [split for split in ("val", "test") if any(split in r.metrics for r in runs)]
    columns = [f"{split} {name}" for split in splits for name in metrics]
    timed = any(s.stats["train s"][2] for s in settings)
    best = {c: max(range(len(settings)), key=lambda i: _rank_value(settings[i].stats[c])) for c in columns}
    rows = []
    for i, s in enumerate(settings):
        rows.append([*(_short(s.values[k]) for k in keys), str(len(s.runs)),
                     *(_cell(s.stats[c], len(settings) > 1 and best[c] == i) for c in columns),
                     *([_cell(s.stats["train s"], False)] if timed else [])])
    headers = [*keys, "n", *columns, *(["train s"] if timed else [])]
    lines = [f"# {title}", "",
             f"{len(runs)} run(s) in {len(settings)} setting(s); each cell: mean ± sample standard deviation over the "
             "setting's runs (seeds), n = runs; best mean per column in bold (the spread says whether it is better). "
             f"Columns: the config keys that differ between the runs (apart from train.seed), then {what} "
             "(percentages).", "",
             "| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|",
             *("| " + " | ".join(row) + " |" for row in rows), ""]
    curves = output.with_name(f"{output.stem}_curves.png")
    bars = output.with_name(f"{output.stem}_bars.png")
    curve_metric = _curve_metric(runs)
    if _plot_curves(settings, curve_metric, curves):
        lines += [f"![validation curves]({curves.name})", "",
                  f"*val {curve_metric} per epoch of every run, one colour per setting*", ""]
    _plot_bars(settings, metrics[0], bars, splits)
    lines += [f"![spread over seeds]({bars.name})", "",
              f"*{metrics[0]} of each setting: bars at the mean, one dot per run, error bars ± one standard deviation*", "",
              "Runs:", "", *(f"- `{path}`" for path in dict.fromkeys(str(r.path) for r in runs)), ""]
    atomic_write_text("\n".join(lines), output)
    numbers = {"keys": keys, "metrics": metrics, "settings": [
        {"values": s.values, "runs": [str(r.path) for r in s.runs],
         "stats": {c: {"mean": m, "std": sd, "n": n} for c, (m, sd, n) in s.stats.items()}} for s in settings]}
    atomic_write_text(json.dumps(numbers, indent=2, default=str), output.with_suffix(".json"))
    return numbers


def _rank_value(stat: tuple[float, float, int]) -> float:
    return stat[0] if stat[2] else -math.inf


def _curve_metric(runs: Sequence[RunRecord]) -> str:
    best = runs[0].config.get("train.best_metric") or "mIoU"
    return best if any(f"val/{best}" in h for r in runs for h in r.history) else "loss"


def _plot_curves(settings: Sequence[Setting], metric: str, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(f"val/{metric}" in h for s in settings for r in s.runs for h in r.history):
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.get_cmap("tab10")
    for i, s in enumerate(settings):
        for j, run in enumerate(s.runs):
            points = [(h["epoch"], h[f"val/{metric}"]) for h in run.history if f"val/{metric}" in h]
            if points:
                ax.plot(*zip(*points), color=colours(i % 10), alpha=0.75, linewidth=1.2, label=s.label if j == 0 else None)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"val {metric}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_bars(settings: Sequence[Setting], metric: str, path: Path, splits: Sequence[str] = ("val", "test")) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(settings) + 2), 4.5))
    width = 0.38
    for k, split in enumerate(splits):
        xs = [i + (k - (len(splits) - 1) / 2) * width for i in range(len(settings))]
        means = [s.stats[f"{split} {metric}"][0] for s in settings]
        stds = [0 if not math.isfinite(s.stats[f"{split} {metric}"][1]) else s.stats[f"{split} {metric}"][1] for s in settings]
        ax.bar(xs, means, width, yerr=stds, capsize=3, alpha=0.6, label=split)
        for x, s in zip(xs, settings):
            ys = [r.metrics.get(split, {}).get(metric) for r in s.runs]
            ax.scatter([x] * len(ys), ys, color="black", s=10, zorder=3)
    ax.set_xticks(range(len(settings)))
    ax.set_xticklabels([s.label for s in settings], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
