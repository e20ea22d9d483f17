"""Run a grid of RA-CNN trainings (attention types x placements x proposers x seeds) with the same
schedule and collect one results table.

    python experiments/ablation.py --grid experiments/grids/quick.yaml [--out DIR] [--jobs N] [--dry-run] [--report]
                                   [--runs RUNS_CSV ...]

A grid file names the base config, shared overrides, seeds, and one or more blocks of axes; each
block contributes the cartesian product of its axes (label -> config overrides):

    config: experiments/configs/fgsynth_default.yaml
    opts: {train.alternate.rounds: 2}
    seeds: [0, 1, 2]
    baseline: attention=none,proposer=apn      # optional; default: the first row
    blocks:
      - attention: {none: {}, se: {model.attention.type: se, model.attention.stages: [3, 4]}}
        proposer: {apn: {model.proposer: apn}}
      - proposer: {center: {model.proposer: center}}

The grid is checked whole before anything trains (``--dry-run`` checks the same and stops): each
key's type and shape (``seeds`` a non-empty list of distinct integers, ``blocks`` a non-empty list
of such mappings, no config key set by two axes of one row, no ``seed`` or ``work_dir`` override:
they come from ``seeds`` and ``--out``) and every row's config, resolved with its overrides; a
problem is one ``error:`` line naming the grid file, the key or row and what is wrong, and exit
code 2. Like config files, a grid file may not write a key twice in one mapping.

Every run trains with tools/train.py in its own work dir (<out>/<row>/seed<k>) and is evaluated on
the test split; a run whose metrics.json exists is skipped, so re-running the command resumes the
grid. ``--jobs N`` trains N runs at a time, each on cpu cores / N threads (its output then goes only
to its train.log); a lock per run makes two runners started on one folder train each run once.
``--report`` trains nothing and writes the tables from the runs that have finished, so a long grid
can be read while it runs (its rows' unfinished runs are listed).
Ctrl-C or SIGTERM (or SIGUSR1) while runs train is passed on to them: each finishes its step, saves
its last.pt and stops, no new run starts, and the runner exits 130 (SIGINT) or 143; running the
command again continues every run where it stopped.
Writes <out>/results.csv, <out>/results.md, <out>/runs.csv and TensorBoard hparams (the means)
under <out>/hparams. runs.csv holds every finished run's own numbers (row, seed, the row's
metrics, images/s, classes); ``--runs <runs.csv>`` gives them back to a later report or grid, which
counts them as finished and trains none of them, after their folders are gone or from another
machine (a runs.csv keeps no config: each line is taken to be a run of the row it names; a run whose
folder exists too is read from there and must agree). Per row and
metric: mean, standard deviation and the 95 % t-interval of the mean over seeds; and, paired by
seed with the baseline row, the mean difference and its 95 % t-interval (``raccnn/stats.py``),
marked * when the interval excludes zero. Parameters and forward FLOPs (torch.utils.flop_counter,
one image) are those of the model each row builds; images/s is measured
during its training. <out>/forest.png, linked from results.md, draws the differences results.md shows:
one line per row, the mean difference and its interval against a line at zero (``raccnn/plots.py``).
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from raccnn.cli import report
from raccnn.config import ConfigError, load_config
from raccnn.configtree import load_yaml
from raccnn.engine.checkpoint import load_checkpoint
from raccnn.engine.preemption import Preempted, Preemption
from raccnn.engine.run import run_differences
from raccnn.errors import RaccnnError
from raccnn.fileio import atomic_open, exclusive_lock
from raccnn.models import build_racnn
from raccnn.models.fusion import fusion_names
from raccnn.plots import forest_plot
from raccnn.stats import LEVEL, paired_difference, t_interval

GRID_KEYS = {"config", "opts", "seeds", "blocks", "baseline"}
GRID_SET_KEYS = {"seed": "seeds", "work_dir": "--out"}  # config keys each run gets from the grid
DIFF_METRICS = ("acc_scale2", "acc_fused_all")  # the columns compared with the baseline in results.md
FOREST = "forest.png"  # beside results.md: DIFF_METRICS' paired differences per row, with their intervals


def load_grid(path: str) -> dict:
    """The grid of ``path``, checked whole (``check_grid``): a ``ConfigError`` naming the file and
    the key of the first problem."""
    if not os.path.isfile(path):
        raise ConfigError(f"grid file not found: {path}")
    grid = load_yaml(path)
    check_grid(grid, path)
    grid.setdefault("opts", {})
    grid["opts"] = grid["opts"] or {}
    grid.setdefault("seeds", [0])
    return grid


def _kind(value) -> str:
    return "null" if value is None else f"{'mapping' if isinstance(value, dict) else type(value).__name__} {value!r}"


def _check_overrides(value, path: str, key: str) -> None:
    """Config overrides: a mapping of dotted config keys to values (or null: none), but no key the
    grid sets for each run itself."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {key}: expected a mapping of config keys to values, got {_kind(value)}")
    for k in value:
        if not isinstance(k, str) or not k or not all(k.split(".")):
            raise ConfigError(f"{path}: {key}: {k!r} is not a dotted config key like train.lr")
        if k in GRID_SET_KEYS:
            raise ConfigError(f"{path}: {key}: {k} is set for each run by the grid ({GRID_SET_KEYS[k]}); remove it")


def check_grid(grid, path: str) -> None:
    """Every key of a grid file of the right type and shape (see the module's docstring), before
    any row's config is read: ``seeds`` a non-empty list of distinct integers, ``blocks`` a
    non-empty list of mappings axis -> {label: overrides}, no key set twice within a row."""
    if not isinstance(grid, dict):
        raise ConfigError(f"{path}: a grid file is a mapping with 'config' and 'blocks', got {_kind(grid)}")
    unknown = set(grid) - GRID_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown grid keys {sorted(map(str, unknown))}; valid: {sorted(GRID_KEYS)}")
    for key in ("config", "blocks"):
        if key not in grid:
            raise ConfigError(f"{path}: a grid needs 'config' and 'blocks' (see experiments/ablation.py); '{key}' is missing")
    if not isinstance(grid["config"], str) or not os.path.isfile(grid["config"]):
        problem = "no such file" if isinstance(grid["config"], str) else "expected the path of a config file"
        raise ConfigError(f"{path}: config: {problem}, got {_kind(grid['config'])}")
    _check_overrides(grid.get("opts"), path, "opts")
    seeds = grid.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds:
        raise ConfigError(f"{path}: seeds: expected a non-empty list of integers, e.g. [0, 1, 2], got {_kind(seeds)}")
    for i, seed in enumerate(seeds):
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"{path}: seeds[{i}]: expected an integer, got {_kind(seed)}")
        if seed in seeds[:i]:
            raise ConfigError(f"{path}: seeds[{i}]: seed {seed} is listed twice (each seed is one run of every row)")
    if "baseline" in grid and not isinstance(grid["baseline"], str):
        raise ConfigError(f"{path}: baseline: expected a row name like axis=label,axis=label, got {_kind(grid['baseline'])}")
    blocks = grid["blocks"]
    if not isinstance(blocks, list) or not blocks:
        raise ConfigError(f"{path}: blocks: expected a non-empty list of blocks (each a mapping axis -> "
                          f"{{label: config overrides}}), got {_kind(blocks)}")
    for b, block in enumerate(blocks):
        where = f"blocks[{b}]"
        if not isinstance(block, dict) or not block:
            raise ConfigError(f"{path}: {where}: expected a non-empty mapping axis -> {{label: config overrides}}, "
                              f"got {_kind(block)}")
        for axis, labels in block.items():
            if not isinstance(axis, str):
                raise ConfigError(f"{path}: {where}: axis {axis!r} is not a name")
            if not isinstance(labels, dict) or not labels:
                raise ConfigError(f"{path}: {where}.{axis}: expected a non-empty mapping label -> config overrides, "
                                  f"got {_kind(labels)}")
            for label, overrides in labels.items():
                if isinstance(label, bool) or not isinstance(label, (str, int, float)):
                    raise ConfigError(f"{path}: {where}.{axis}: label {label!r} is read by YAML as "
                                      f"{_kind(label).split()[0]}; quote it")
                _check_overrides(overrides, path, f"{where}.{axis}.{label}")
        for name, choice in _block_rows(block):  # two axes of a row setting one key: which would win?
            set_by: dict = {}
            for axis, (_, overrides) in zip(block, choice):
                for k in overrides or {}:
                    if k in set_by:
                        raise ConfigError(f"{path}: {where}, row {name}: axes '{set_by[k]}' and '{axis}' both set {k}")
                    set_by[k] = axis


def _block_rows(block: dict):
    """(row name, ((label, overrides) per axis)) for each row of a block."""
    for choice in itertools.product(*[list(labels.items()) for labels in block.values()]):
        yield ",".join(f"{axis}={label}" for axis, (label, _) in zip(block, choice)), choice


def expand_rows(grid: dict) -> list[tuple[str, dict, dict]]:
    """(row name, {axis: label}, overrides) for every row of every block, in order; a row that
    two blocks both give appears once (a ``ConfigError`` when their overrides differ)."""
    rows: dict[str, tuple[dict, dict]] = {}
    for block in grid["blocks"]:
        for name, choice in _block_rows(block):
            labels = {axis: str(label) for axis, (label, _) in zip(block, choice)}
            overrides = {}
            for _, opts in choice:
                overrides.update(opts or {})
            if name in rows and rows[name][1] != overrides:
                raise ConfigError(f"row {name} is given twice with different overrides ({rows[name][1]} and "
                                  f"{overrides}); rename one of its labels")
            rows.setdefault(name, (labels, overrides))
    return [(name, labels, overrides) for name, (labels, overrides) in rows.items()]


def to_opts(overrides: dict) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in overrides.items()]


def row_config(grid_path: str, config: str, opts: list[str], name: str) -> dict:
    """A row's resolved config (nothing built); a problem names the grid file and the row."""
    try:
        return load_config(config, opts)
    except ConfigError as exc:
        raise ConfigError(f"{grid_path}: row {name}: {exc}") from None


def row_dir(out: Path, name: str) -> Path:
    """A folder name for a row: characters other than letters, digits and ._+- become '_'."""
    return out / re.sub(r"[^A-Za-z0-9._+-]", "_", name)


def model_cost(cfg: dict, num_classes: int) -> tuple[int, float]:
    """Parameters and forward FLOPs of one image (oracle rows need part boxes: use the centre)."""
    model = build_racnn(dict(cfg, model=dict(cfg["model"], pretrained=False)), num_classes).eval()
    size = cfg["data"]["crop"]
    x = torch.zeros(1, 3, size, size)
    boxes = [torch.tensor([[0.5, 0.5, 0.25]])] * (model.n_scales - 1) if model.proposer == "oracle" else None
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, boxes=boxes)
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops()


class RunFailed(RaccnnError):
    """A training run of the grid ended with an error."""


class RunStopped(Exception):
    """A signal stopped the grid before or while this run trained (its last.pt holds where)."""


class Trainings:
    """The training processes running now. A signal to the runner goes on to each of them (a
    Ctrl-C in a terminal reaches them already; a training takes only its first signal), and no
    training starts after it."""

    def __init__(self):
        self.lock = threading.Lock()
        self.running: list[subprocess.Popen] = []
        self.signum: int | None = None
        self.stopped = 0  # trainings running when the signal came

    def run(self, cmd: list[str], **kwargs) -> int:
        with self.lock:
            if self.signum is not None:
                raise RunStopped()
            proc = subprocess.Popen(cmd, **kwargs)
            self.running.append(proc)
        try:
            return proc.wait()
        finally:
            with self.lock:
                self.running.remove(proc)

    def stop(self, signum: int) -> None:
        with self.lock:  # (only worker threads start trainings: the handler's thread never holds it)
            self.signum, self.stopped = signum, len(self.running)
            for proc in self.running:
                proc.send_signal(signum)


TRAININGS = Trainings()


def row_metrics(n_scales: int) -> list[str]:
    """The metrics a row reports: every scale, the fusion head over all scales, the scale-2 part hit."""
    return [f"acc_scale{s}" for s in range(1, n_scales + 1)] + [f"acc_fused{fusion_names(n_scales)[-1]}", "part_hit_scale2"]


def run_one(config: str, opts: list[str], work_dir: Path, threads: int | None = None) -> dict:
    """Train and test one run, unless its work dir already holds the test metrics of this config.
    ``threads``: the run's CPU threads (its output then goes only to its train.log)."""
    work_dir.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(work_dir.parent / f".{work_dir.name}.lock"):  # another runner on this run: wait, then reuse
        metrics_path = work_dir / "metrics.json"
        if metrics_path.exists():
            saved = load_config(work_dir / "config.yaml")
            # the same experiment as a resume asks (raccnn/engine/run.py), learning rates included: a run
            # copied from another grid's folder counts, and so does one computed another way
            diff = run_differences(saved, load_config(config, opts + [f"work_dir={work_dir}"]))
            if diff:
                raise ConfigError(f"{work_dir} holds a run of another config ({diff[:4]}); remove it or use --out")
        else:
            cmd = [sys.executable, "tools/train.py", "--config", config, "--work-dir", str(work_dir),
                   "--resume", "auto", "--eval-split", "test", "--opts", *opts]
            print("$", " ".join(cmd), flush=True)
            env = dict(os.environ)
            if threads:
                env.update({k: env.get(k, str(threads)) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})
            quiet = threads or os.environ.get("RACCNN_QUIET")
            code = TRAININGS.run(cmd, stdout=subprocess.DEVNULL if quiet else None, env=env)
            if code != 0 and TRAININGS.signum is not None:
                raise RunStopped()
            if code != 0:
                raise RunFailed(f"the run in {work_dir} failed (exit {code}); see {work_dir}/train.log")
    metrics = json.loads(metrics_path.read_text())
    progress = load_checkpoint(work_dir / "last.pt")["progress"]
    metrics["images_per_s"] = progress["train_images"] / max(progress["train_seconds"], 1e-9)
    return metrics


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", required=True)
    p.add_argument("--out", default=None, help="default: work_dirs/ablation_<grid file stem>")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at a time, each on cpu cores / jobs threads")
    p.add_argument("--dry-run", action="store_true", help="validate every row's config and list the runs")
    p.add_argument("--report", action="store_true",
                   help="train nothing: write the tables from the runs that have finished (e.g. while the grid runs)")
    p.add_argument("--runs", action="append", default=[], metavar="CSV",
                   help="finished runs from a runs.csv an earlier report wrote (repeatable): they count as "
                        "finished and are not trained")
    args = p.parse_args(argv)

    try:
        if args.jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
        grid = load_grid(args.grid)
        try:
            rows = expand_rows(grid)
        except ConfigError as exc:
            raise ConfigError(f"{args.grid}: {exc}") from None
        shared = to_opts(grid["opts"])
        # every row's config is validated before anything trains
        configs = {name: row_config(args.grid, grid["config"], shared + to_opts(ov), name) for name, _, ov in rows}
        folders = [row_dir(Path(""), name) for name, _, _ in rows]
        if len(set(folders)) != len(folders):
            raise ConfigError(f"{args.grid}: two rows map to the same folder name; rename their labels")
        baseline = grid.get("baseline", rows[0][0])
        if baseline not in configs:
            raise ConfigError(f"{args.grid}: baseline {baseline!r} is not a row; rows: {list(configs)}")
    except (RaccnnError, OSError) as exc:
        return report(exc)
    out = Path(args.out or f"work_dirs/ablation_{Path(args.grid).stem}")
    print(f"{len(rows)} rows x {len(grid['seeds'])} seeds -> {out}")
    if args.dry_run:
        for name, _, _ in rows:
            print(" ", name)
        return 0

    from torch.utils.tensorboard import SummaryWriter

    threads = max(1, len(os.sched_getaffinity(0)) // args.jobs) if args.jobs > 1 else None
    runs = {(name, seed): (shared + to_opts(overrides) + [f"seed={seed}"], row_dir(out, name) / f"seed{seed}")
            for name, _, overrides in rows for seed in grid["seeds"]}
    try:
        kept = read_runs(args.runs, {name: row_metrics(cfg["model"]["n_scales"]) for name, cfg in configs.items()},
                         grid["seeds"])
    except (RaccnnError, OSError) as exc:
        return report(exc)
    if args.report:  # only the finished runs; one still training has no metrics.json yet
        runs = {key: run for key, run in runs.items() if (run[1] / "metrics.json").exists()}
    # a kept run with a folder too is read from there and must agree; one without is not trained
    runs = {key: run for key, run in runs.items() if key not in kept or (run[1] / "metrics.json").exists()}
    # the runs are subprocesses: the threads only wait
    with Preemption(on_signal=TRAININGS.stop) as signals, signals.deferred(), ThreadPoolExecutor(args.jobs) as pool:
        futures = {key: pool.submit(run_one, grid["config"], opts, work_dir, threads)
                   for key, (opts, work_dir) in runs.items()}
    if signals.signum is not None:
        print(f"{Preempted(signals.signum)}: {TRAININGS.stopped} training(s) stopped, each keeping its last.pt; "
              f"run the same command again to continue", file=sys.stderr)
        return Preempted(signals.signum).exit_code
    per_row = {name: {} for name, _, _ in rows}
    for (name, seed), m in kept.items():
        per_row[name][seed] = m
    for (name, seed), future in futures.items():
        try:
            per_row[name][seed] = future.result()
            if (name, seed) in kept:
                check_kept(kept[name, seed], per_row[name][seed], runs[name, seed][1])
        except RaccnnError as exc:  # this run's row is reported as failed; the others are tabled
            report(exc)
            per_row[name].pop(seed, None)
    incomplete = sum(len(per_row[name]) < len(grid["seeds"]) for name, _, _ in rows)
    failed = 0 if args.report else incomplete
    # what a row's missing runs are; a report of a finished grid is the table its last run wrote
    missing = "unfinished" if args.report and incomplete else "failed"

    results = []
    for name, labels, _ in rows:
        row = summarise(name, per_row[name], per_row[baseline], configs[name], grid["seeds"], missing)
        row["baseline"] = baseline
        results.append(row)
        if row["seeds"]:
            metrics = row_metrics(configs[name]["model"]["n_scales"])
            with SummaryWriter(log_dir=str(row_dir(out / "hparams", name))) as w:
                w.add_hparams(labels, {f"hparam/{k}": row[k] for k in metrics if row[k] == row[k]}, run_name=".")

    write_results(out, results, missing)
    write_runs(out, per_row, {name: row_metrics(configs[name]["model"]["n_scales"]) for name in per_row})
    print((out / "results.md").read_text())
    return 1 if failed else 0


def read_runs(paths: list[str], metrics: dict, seeds: list) -> dict:
    """The runs of this grid in the runs.csv files ``paths`` (``write_runs``), as (row, seed) -> the
    numbers ``run_one`` returns; ``metrics``: row -> its metric keys (``row_metrics``). A line of a row
    or seed the grid lacks is skipped (and counted in a printed note); an unreadable file, a missing
    column, a value that is not a number, a row's metric left empty or one run twice with other numbers
    is a ``ConfigError`` naming the file and line. A runs.csv keeps no config: its runs are taken to be
    of the rows they name."""
    kept, where, skipped = {}, {}, 0
    for path in paths:
        if not os.path.isfile(path):
            raise ConfigError(f"--runs: file not found: {path}")
        try:
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                absent = {"row", "seed"} - set(reader.fieldnames or [])
                if absent:
                    raise ConfigError(f"{path}: no column {', '.join(sorted(absent))}; a runs.csv begins 'row,seed,'")
                for line in reader:
                    at = f"{path}, line {reader.line_num}"
                    try:
                        seed = int(line["seed"])
                    except (TypeError, ValueError):
                        raise ConfigError(f"{at}: seed {line['seed']!r} is not an integer") from None
                    name = line["row"]
                    if name not in metrics or seed not in seeds:
                        skipped += 1
                        continue
                    run = {}
                    for key in metrics[name] + ["images_per_s", "num_classes"]:
                        text = line.get(key) or ""
                        if not text and key in metrics[name]:
                            raise ConfigError(f"{at}: row {name!r} needs {key}, which is empty or missing")
                        try:
                            if text:
                                run[key] = int(text) if key == "num_classes" else float(text)
                        except ValueError:
                            raise ConfigError(f"{at}: {key} {text!r} is not a number") from None
                    if (name, seed) in kept and kept[name, seed] != run:
                        raise ConfigError(f"{at}: {name} seed {seed} has other numbers in {where[name, seed]}")
                    kept[name, seed], where[name, seed] = run, at
        except (csv.Error, UnicodeDecodeError) as exc:  # not text, or not a csv
            raise ConfigError(f"{path}: not a readable runs.csv ({exc})") from None
    if skipped:
        print(f"--runs: {skipped} run(s) of rows or seeds this grid does not have, left out")
    return kept


def check_kept(kept: dict, run: dict, work_dir: Path) -> None:
    """A run given by --runs whose folder exists too: the folder's metrics must be the runs.csv's."""
    differ = [k for k, v in kept.items() if k in run and run[k] != v and k != "images_per_s"]
    if differ:
        raise ConfigError(f"{work_dir}: its metrics.json differs from --runs in {', '.join(differ)}; "
                          f"one of them is of another run")


def summarise(name: str, runs: dict, baseline_runs: dict, cfg: dict, seeds: list, missing: str = "failed") -> dict:
    """One table row: per metric the t-interval over seeds and the paired difference with the
    baseline's runs of the same seeds; the seeds without a run under ``missing``."""
    row = {"row": name, "seeds": len(runs), missing: ", ".join(f"seed {s}" for s in seeds if s not in runs)}
    if not runs:
        return row
    classes = [m["num_classes"] for m in runs.values() if "num_classes" in m]
    if classes:  # (a run from an older runs.csv has no class count: its row has no cost)
        params, flops = model_cost(cfg, classes[0])
        row.update(params=params, gflops=flops / 1e9)
    rates = [m["images_per_s"] for m in runs.values() if "images_per_s" in m]
    if rates:
        row["images_per_s"] = statistics.fmean(rates)
    metrics = row_metrics(cfg["model"]["n_scales"])
    fused_all = metrics[-2]

    def value(m, key):
        return m.get(fused_all if key == "acc_fused_all" else key)

    for key in metrics + ["acc_fused_all"]:
        ci = t_interval([value(m, key) for m in runs.values()])
        row.update({key: ci.mean, f"{key}_std": ci.std, f"{key}_ci_lo": ci.lo, f"{key}_ci_hi": ci.hi})
        diff = paired_difference({s: value(m, key) for s, m in runs.items()},
                                 {s: value(m, key) for s, m in baseline_runs.items()})
        row.update({f"{key}_diff": diff.mean, f"{key}_diff_ci_lo": diff.lo, f"{key}_diff_ci_hi": diff.hi,
                    f"{key}_diff_pairs": diff.n, f"{key}_diff_excludes_zero": diff.excludes_zero})
    return row


def write_runs(out: Path, per_row: dict, metrics: dict) -> None:
    """runs.csv: one line per finished run (``per_row``: row -> seed -> what ``run_one`` returned), the
    row's ``metrics`` as metrics.json has them (fractions), the run's training images/s and its number
    of classes; a metric a row lacks is empty. ``--runs`` reads it back (``read_runs``)."""
    keys = list(dict.fromkeys(k for name in per_row for k in metrics[name])) + ["images_per_s", "num_classes"]
    with atomic_open(out / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["row", "seed", *keys], restval="")
        writer.writeheader()
        for name, runs in per_row.items():
            for seed, m in sorted(runs.items()):
                writer.writerow({"row": name, "seed": seed, **{k: m[k] for k in keys if k in m}})


def write_results(out: Path, results: list[dict], missing: str = "failed") -> None:
    """results.csv (every key of every row), forest.png (``raccnn.plots.forest_plot`` of the
    differences results.md shows) and results.md, which links the picture; rows may have different
    numbers of scales (a missing scale shows as n/a) and a row with missing runs says which:
    ``failed``, or ``unfinished`` for a ``--report`` written while the grid runs."""
    out.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for r in results for k in r))
    with atomic_open(out / "results.csv", "w", newline="") as f:  # two runners on one folder both write it
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(results)

    def pct(row, key):
        m, s = row.get(key, float("nan")), row.get(key + "_std", float("nan"))
        if m != m:
            return "n/a"
        lo, hi = row[key + "_ci_lo"], row[key + "_ci_hi"]
        ci = f" [{100 * lo:.1f}, {100 * hi:.1f}]" if lo == lo else ""
        return f"{100 * m:.1f} ± {100 * s:.1f}{ci}"

    def diff(row, key):
        d = row.get(key + "_diff", float("nan"))
        if d != d or row["row"] == row.get("baseline"):
            return "-"
        lo, hi = row[key + "_diff_ci_lo"], row[key + "_diff_ci_hi"]
        ci = f" [{100 * lo:+.1f}, {100 * hi:+.1f}]" if lo == lo else ""
        return f"{100 * d:+.1f}{ci}{' *' if row[key + '_diff_excludes_zero'] else ''}"

    n = max((int(k[len("acc_scale"):]) for r in results for k in r if re.fullmatch(r"acc_scale\d+", k)), default=0)
    scales = [f"acc_scale{s}" for s in range(1, n + 1)]
    lines = ["| row | " + " | ".join(f"scale {s}" for s in range(1, n + 1)) + " | fused (all) | part hit s2 | "
             f"Δ scale 2 | Δ fused | params (M) | GFLOPs | img/s | {missing} runs |", "|---|" + "---:|" * (n + 7) + "---|"]
    for r in results:
        cost = (f"{r['params'] / 1e6:.2f} | {r['gflops']:.3f}" if "params" in r else "n/a | n/a") + " | " + (
            f"{r['images_per_s']:.0f}" if "images_per_s" in r else "n/a")
        lines.append(f"| {r['row']} | " + " | ".join(pct(r, k) for k in scales + ["acc_fused_all", "part_hit_scale2"])
                     + " | " + " | ".join(diff(r, k) for k in DIFF_METRICS) + f" | {cost} | {r[missing] or '-'} |")
    baseline = next((r.get("baseline") for r in results if r.get("baseline")), None)
    lines.append("")
    lines.append(f"Test-split accuracy and part hit in %: mean ± standard deviation [{100 * LEVEL:.0f} % Student-t "
                 f"interval of the mean] over the seeds that finished ({max(r['seeds'] for r in results)} per row at "
                 f"most). Δ: mean difference from the baseline row ({baseline}) paired by seed, in points, with its "
                 f"{100 * LEVEL:.0f} % t-interval; * when that interval excludes zero. "
                 + ("A failed run's log is in its work dir." if missing == "failed" else
                    "Written while the grid runs: the unfinished runs are left out (paired differences over the "
                    "seeds both rows have)."))
    forest_plot(results, DIFF_METRICS, out / FOREST)
    lines += ["", f"![paired differences from the baseline, {100 * LEVEL:.0f} % t-intervals]({FOREST})"]
    with atomic_open(out / "results.md", "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C while no training runs (checking the grid, writing the tables)
        print("stopped by SIGINT", file=sys.stderr)
        sys.exit(130)
