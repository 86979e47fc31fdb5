"""`edgebench demo`: a thin click wrapper over edgebench.demo.run_demo."""

from __future__ import annotations

from pathlib import Path

import click

from edgebench.demo import DEFAULT_DEVICES, DemoError, DemoOptions, DemoResult, run_demo


@click.command("demo")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("edgebench-demo"),
    show_default=True,
    help="Where the database, artifacts, keys, logs and report go.",
)
@click.option(
    "--devices",
    "device_count",
    type=click.IntRange(1, len(DEFAULT_DEVICES)),
    default=len(DEFAULT_DEVICES),
    show_default=True,
    help="How many local agents pose as devices.",
)
@click.option("--model", default=None, help="An .onnx file or package.module:factory (default: digits CNN).")
@click.option(
    "--calib", type=click.Path(exists=True, path_type=Path), help="Calibration data (with --model)."
)
@click.option("--val", type=click.Path(exists=True, path_type=Path), help="Validation data (with --model).")
@click.option("--recipe", default="default", show_default=True, help="default, all, or a recipe file.")
@click.option("--max-accuracy-drop", type=float, default=1.0, show_default=True, help="Budget in points.")
@click.option(
    "--broker",
    type=click.Choice(["auto", "mosquitto", "embedded"]),
    default="auto",
    show_default=True,
    help="auto: mosquitto when installed, else the embedded amqtt broker (MQTT 3.1.1).",
)
@click.option(
    "--preset", type=click.Choice(["quick", "default", "thorough"]), default="quick", show_default=True
)
@click.option("--min-time", "min_time_s", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Seconds of timed runs per artifact and device at least.")  # fmt: skip
@click.option("--timeout", "timeout_s", type=click.FloatRange(10), default=600, show_default=True)
@click.option(
    "--keep",
    is_flag=True,
    help="Add this run to the previous runs' database (default: each run starts with a fresh one).",
)
def demo(workdir: Path, device_count: int, model: str | None, calib: Path | None, val: Path | None,
         recipe: str, max_accuracy_drop: float, broker: str, preset: str, min_time_s: float,
         timeout_s: float, keep: bool) -> None:  # fmt: skip
    """Run the whole system on this machine: a broker, a collector and local agents posing as
    devices; convert a model, push every variant to the fleet, benchmark them on each device, and
    print the cross-device report (HTML too). Stops everything it started; keeps the database.

    Each run starts afresh in WORKDIR (the previous run's database, broker and device state are
    removed; keys and artifacts stay), so the report shows this run only; --keep pools the runs."""
    options = DemoOptions(
        workdir=workdir,
        devices=DEFAULT_DEVICES[:device_count],
        model=model,
        calib=calib,
        val=val,
        recipe=recipe,
        max_accuracy_drop=max_accuracy_drop,
        broker=broker,
        preset=preset,
        min_time_s=min_time_s,
        timeout_s=timeout_s,
        keep=keep,
    )
    try:
        result = run_demo(options, log=click.echo)
    except DemoError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"\n{closing_line(result)}\nExplore: edgebench report latency --db {result.db_path}"
        f"  |  edgebench report ops --db {result.db_path}  |  edgebench fleet devices --db {result.db_path}"
        f"  |  datasette {result.db_path}"
    )


def closing_line(result: DemoResult) -> str:
    """The demo's last words: what this run stored, and what the report pooled when that is more (runs
    accumulated with ``keep``)."""
    run = (
        f"done in {result.seconds:.0f} s: {result.results} results from {len(result.devices)} devices x "
        f"{len(result.variants)} variants"
    )
    pooled = set(result.report_devices) - set(result.devices)
    if result.report_results > result.results or pooled:
        devices = len(set(result.report_devices) | set(result.devices))
        run += (
            f" this run; the report pools every run kept in {result.db_path}: {result.report_results} "
            f"results from {devices} devices (--keep)"
        )
    return run + "."
