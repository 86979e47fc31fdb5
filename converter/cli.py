"""`edgebench convert`: a thin click wrapper over converter.pipeline.convert."""

from __future__ import annotations

import click

from converter.errors import ConvertError
from converter.fidelity import OUTPUT_KINDS

STATUS_TEXT = {"ok": "ok", "degraded": "DEGRADED", "no-op": "NO-OP", "failed": "FAILED"}
VERSUS_TEXT = {"faster": "faster", "slower": "slower", "tie": "same"}


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _row(a, ref, recommended: str | None) -> tuple[str, ...]:
    from converter.fidelity import accuracy_drop
    from converter.recommend import compare, speedup_range

    name = a.name + (" *" if a.name == recommended else "")
    if a.status == "failed":
        return (name, a.format, *["-"] * 12, STATUS_TEXT[a.status])
    f = a.fidelity
    ci = a.host_latency_ci_ms
    speed = speedup_range(a, ref) if a.name != ref.name else None
    versus = compare(a, ref) if a.name != ref.name else None
    return (
        name,
        a.format,
        _fmt(a.size_bytes / 1e6, ".3f"),
        _fmt(ref.size_bytes / a.size_bytes, ".2f"),
        _fmt(a.gzip_bytes / 1e6, ".3f"),
        _fmt(a.host_latency_ms, ".3f"),
        "-" if ci is None else f"{ci[0]:.3f}-{ci[1]:.3f}",
        "-" if speed is None else f"{speed[0]:.2f} ({speed[1]:.2f}-{speed[2]:.2f})",
        "-" if versus is None else VERSUS_TEXT[versus],
        _fmt(a.host_peak_mb, ".1f"),
        _fmt(f.accuracy, ".2f"),
        _fmt(accuracy_drop(f), ".2f"),
        _fmt(f.top1_agreement, ".1f"),
        _fmt(f.cosine, ".4f"),
        STATUS_TEXT[a.status],
    )


def comparison_table(result) -> str:
    """The "before vs after" table: size, gzip, host latency with its CI and the speedup vs fp32 ("faster"
    only when the intervals do not overlap), memory at batch 1, fidelity vs the fp32 reference, status."""
    header = (
        "artifact",
        "format",
        "size MB",
        "x smaller",
        "gzip MB",
        "latency ms",
        "95% CI ms",
        "x faster (CI)",
        "vs fp32",
        "mem MB b1",
        "accuracy %",
        "drop pt",
        "top-1 agree %",
        "cosine",
        "status",
    )
    manifest = result.manifest
    rows = [header, *(_row(a, result.reference, manifest.recommended) for a in manifest.artifacts)]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def basis_line(manifest) -> str:
    """How the table's fidelity was judged (the bounds an ``ok`` artifact meets)."""
    v = manifest.validation
    if v.fidelity_basis == "continuous":
        rel = f", relative error <= {manifest.max_relative_error}" if manifest.max_relative_error else ""
        bound = f"continuous metrics: ok = cosine >= {manifest.min_cosine}{rel}"
    else:
        what = "accuracy on the labels" if v.fidelity_basis == "accuracy" else "top-1 agreement with fp32"
        bound = (
            f"{what}: ok = at most {manifest.max_accuracy_drop} pt lost and cosine of the class "
            f"probabilities >= {manifest.min_cosine}"
        )
    return f"fidelity ({v.output_kind} outputs, {v.n} samples): {bound}"


def _report(result) -> None:
    manifest = result.manifest
    click.echo("")
    click.echo(comparison_table(result))
    click.echo(f"\n{basis_line(manifest)}")
    for warning in result.warnings:
        click.echo(f"warning: {warning}")
    for a in manifest.artifacts:
        if a.status != "ok":
            click.echo(f"{a.status}: {a.name}: {a.error}")
    click.echo(
        f"\nrecommended: {manifest.recommended or 'none'} (* above; the smallest, simplest ok artifact not "
        "slower than the fastest by the latency CIs)"
    )
    click.echo(f"manifest: {result.manifest_path}")


@click.command(name="convert")
@click.argument("model", required=False)
@click.option("--recipe", default="default", show_default=True, help="default | all | a JSON recipe file")
@click.option(
    "--calib", "calib", type=click.Path(exists=True), help="calibration data: .npy/.npz/image folder"
)
@click.option(
    "--val", "val", type=click.Path(exists=True), help="validation data: .npy/.npz (labels y)/image folder"
)
@click.option(
    "--out", "out", type=click.Path(file_okay=False), help="output directory (artifacts + manifest.json)"
)
@click.option(
    "--max-accuracy-drop",
    type=float,
    default=1.0,
    show_default=True,
    help="classification outputs: points of accuracy (labels) or top-1 agreement an ok artifact may lose",
)
@click.option(
    "--min-cosine",
    type=float,
    default=0.99,
    show_default=True,
    help="continuous fidelity (dense outputs, or an uninformative reference): least cosine to fp32 of an ok "
    "artifact",
)
@click.option(
    "--max-relative-error",
    type=float,
    default=None,
    help="continuous fidelity: most ||out - fp32|| / ||fp32|| of an ok artifact (default: not bounded)",
)
@click.option(
    "--output-kind",
    type=click.Choice(OUTPUT_KINDS),
    default="auto",
    show_default=True,
    help="classification ([N, classes] scores: top-1) or dense (maps, embeddings, regressions: cosine); "
    "auto decides from the output shape",
)
@click.option(
    "--state-dict", type=click.Path(exists=True), help="state_dict for a package.module:factory MODEL"
)
@click.option("--max-val", type=int, default=1000, show_default=True, help="validation samples used at most")
@click.option(
    "--latency-budget",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="seconds of host timing per artifact (0: no timing, no recommendation)",
)
@click.option(
    "--latency-rounds",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="interleaved timing rounds the budget is split into (the CI is over the rounds)",
)
@click.option(
    "--list-passes", is_flag=True, help="list the registered passes and their parameters, then exit"
)
def convert(model, recipe, calib, val, out, state_dict, max_val, list_passes, **fidelity_and_timing) -> None:
    """Turn MODEL (an .onnx file or package.module:factory for PyTorch) into optimized artifacts (ONNX
    fp16/int8, pruned, distilled, TFLite), check each against the fp32 reference on --val data, and write
    OUT/manifest.json. Each artifact is ok (within the fidelity bounds), DEGRADED (outside them: kept,
    never recommended), NO-OP (the pass changed nothing) or FAILED. Recommended: the smallest, simplest ok
    artifact that is not slower, by the host-latency confidence intervals, than the fastest one nor than
    fp32. TFLite from an ONNX-only MODEL runs onnx2tf in its own venv: run deploy/make-onnx2tf-env.sh once
    and export the EDGEBENCH_ONNX2TF_PYTHON it prints."""
    from converter import passes
    from converter.pipeline import convert as run

    if list_passes:
        click.echo(passes.describe())
        return
    missing = [
        name for name, v in (("MODEL", model), ("--calib", calib), ("--val", val), ("--out", out)) if not v
    ]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)}")
    options = dict(fidelity_and_timing)
    options["latency_budget_s"] = options.pop("latency_budget")
    try:
        result = run(
            model,
            calib=calib,
            val=val,
            out_dir=out,
            recipe=recipe,
            state_dict=state_dict,
            max_val=max_val,
            log=click.echo,
            **options,
        )
    except ConvertError as exc:
        raise click.ClickException(str(exc)) from None
    _report(result)
