"""`edgebench convert`: a thin click wrapper over converter.pipeline.convert."""

from __future__ import annotations

import click

from converter.errors import ConvertError


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def comparison_table(result) -> str:
    """The "before vs after" table: size, gzip, latency, memory, accuracy, agreement vs the fp32 reference."""
    from converter.evaluate import accuracy_drop

    ref = result.reference
    rows = [
        (
            "artifact",
            "format",
            "size MB",
            "x smaller",
            "gzip MB",
            "latency ms",
            "x faster",
            "mem MB",
            "accuracy %",
            "drop pt",
            "top-1 agree %",
            "status",
        )
    ]
    for a in result.manifest.artifacts:
        if a.status != "ok":
            rows.append((a.name, a.format, "-", "-", "-", "-", "-", "-", "-", "-", "-", "FAILED"))
            continue
        f = a.fidelity
        faster = (
            ref.host_latency_ms / a.host_latency_ms if a.host_latency_ms and ref.host_latency_ms else None
        )
        rows.append(
            (
                a.name + (" *" if a.name == result.manifest.recommended else ""),
                a.format,
                _fmt(a.size_bytes / 1e6, ".3f"),
                _fmt(ref.size_bytes / a.size_bytes, ".2f"),
                _fmt(a.gzip_bytes / 1e6, ".3f"),
                _fmt(a.host_latency_ms, ".3f"),
                _fmt(faster, ".2f"),
                _fmt(result.memory_mb.get(a.name), ".1f"),
                _fmt(f.accuracy, ".2f"),
                _fmt(accuracy_drop(f), ".2f"),
                _fmt(f.top1_agreement, ".1f"),
                "ok",
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


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
    "--max-accuracy-drop", type=float, default=1.0, show_default=True, help="accuracy budget in points"
)
@click.option(
    "--state-dict", type=click.Path(exists=True), help="state_dict for a package.module:factory MODEL"
)
@click.option("--max-val", type=int, default=1000, show_default=True, help="validation samples used at most")
@click.option(
    "--list-passes", is_flag=True, help="list the registered passes and their parameters, then exit"
)
def convert(model, recipe, calib, val, out, max_accuracy_drop, state_dict, max_val, list_passes) -> None:
    """Turn MODEL (an .onnx file or package.module:factory for PyTorch) into optimized artifacts (ONNX
    fp16/int8, pruned, distilled, TFLite), check each against the fp32 reference on --val data, and write
    OUT/manifest.json with the recommended artifact (fastest within --max-accuracy-drop, never slower
    than fp32). TFLite from an ONNX-only MODEL runs onnx2tf in its own venv: run
    deploy/make-onnx2tf-env.sh once and export the EDGEBENCH_ONNX2TF_PYTHON it prints."""
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
    try:
        result = run(
            model,
            calib=calib,
            val=val,
            out_dir=out,
            recipe=recipe,
            max_accuracy_drop=max_accuracy_drop,
            state_dict=state_dict,
            max_val=max_val,
            log=click.echo,
        )
    except ConvertError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("")
    click.echo(comparison_table(result))
    failed = [a for a in result.manifest.artifacts if a.status != "ok"]
    for a in failed:
        click.echo(f"failed: {a.name}: {a.error}")
    click.echo(f"\nrecommended: {result.manifest.recommended or 'none'} (* above)")
    click.echo(f"manifest: {result.manifest_path}")
