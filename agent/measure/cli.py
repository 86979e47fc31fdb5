"""`edgebench bench MODEL...`: a thin click wrapper over agent.measure.bench.run_benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import click

from agent.measure.bench import BenchOptions, run_benchmark
from wire.artifacts import UNKNOWN_SHA256
from wire.errors import EdgebenchError
from wire.schema import (
    PERCENTILE_FLOORS,
    BoardState,
    CpuStats,
    EnergyStats,
    LatencyStats,
    MemoryStats,
    OpProfile,
    ResultRecord,
    percentile_supported,
)


def _int_list(text: str | None, what: str) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        values = tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise click.BadParameter(
            f"expected a comma list of integers, e.g. 1,2,4 (got {text!r})", param_hint=what
        ) from None
    if any(v < 1 for v in values):
        raise click.BadParameter("values must be >= 1", param_hint=what)
    return values


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if x < 0.1 else f"{x:.3f}" if x < 10 else f"{x:.1f}"


def _pct(s: LatencyStats, name: str) -> str:
    """A percentile cell: the value, or "n<FLOOR" where n cannot support it (a record keeps None there)."""
    value = getattr(s, name)
    if not percentile_supported(name, s.n):
        return f"n<{PERCENTILE_FLOORS[name]}"
    return _ms(value)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False)))
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


_MODEL_COLUMNS = (
    "threads",
    "batch",
    "p50 ms",
    "95% CI",
    "p90",
    "p99",
    "mean±std",
    "CV",
    "n",
    "items/s",
    "load ms",
    "1st ms",
    "peak MB",
    "verdict",
)


def format_model(records: list[ResultRecord]) -> str:
    """One model's records: a header line, a row per configuration, notes from the first ok record."""
    a = records[0].artifact
    sha = "unreadable" if a.sha256 == UNKNOWN_SHA256 else a.sha256[:12]
    head = f"{a.name}  ({a.format}, {a.precision}, {a.size_bytes / 1e6:.3f} MB, sha256 {sha})"
    rows = [list(_MODEL_COLUMNS), *(_config_row(r) for r in records)]
    ok = [r for r in records if r.status == "ok"]
    notes = _notes(ok[0]) if ok else []
    return "\n".join([head, _table(rows), *("  " + n for n in notes)])


def _config_row(r: ResultRecord) -> list[str]:
    """One configuration's row of the model table; a failed one shows its status and error."""
    if r.status != "ok" or r.latency is None:
        return [
            str(r.config.threads or "def"),
            str(r.config.batch),
            r.status.upper(),
            *["-"] * 10,
            r.error or "",
        ]
    s = r.latency
    ci = f"{_ms(s.p50_ci_low_ms)}-{_ms(s.p50_ci_high_ms)}" if s.p50_ci_low_ms is not None else "-"
    mem = r.memory.inference_peak_mb if r.memory else None
    return [
        str(r.config.threads or "def"),
        str(r.config.batch),
        _ms(s.p50_ms),
        ci,
        _pct(s, "p90_ms"),
        _pct(s, "p99_ms"),
        f"{_ms(s.mean_ms)}±{_ms(s.std_ms)}",
        f"{s.cv * 100:.1f}%",
        str(s.n),
        f"{s.throughput_ips:.1f}",
        _ms(r.cold_start.load_ms if r.cold_start else None),
        _ms(r.cold_start.first_inference_ms if r.cold_start else None),
        _f(mem, 1),
        s.verdict,
    ]


def _notes(r: ResultRecord) -> list[str]:
    """Runtime, memory, board, energy and operator notes of one ok record (those it has)."""
    runtime = f"{r.config.runtime} {r.config.runtime_version}"
    notes = [
        f"runtime: {runtime}; inputs {r.config.input_source} "
        + ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in r.config.input_shapes.items())
    ]
    timed = [f"{k} {r.config.options[k]}" for k in ("stop", "samples") if k in r.config.options]
    if timed:
        notes.append("timed runs: " + "; ".join(timed))
    if r.memory:
        notes.append(_memory_note(r.memory))
    if r.board:
        notes.append(_board_note(r.board))
    if r.energy:
        notes.append(_energy_note(r.energy, r.cpu))
    if r.profile:
        notes.append(_ops_note(r.profile))
    return notes


def _memory_note(m: MemoryStats) -> str:
    return (
        f"memory ({m.method}): baseline {_f(m.baseline_rss_mb, 1)} MB, runtime import "
        f"{_f(m.after_import_rss_mb, 1)}, load peak {_f(m.load_peak_mb, 1)}, inference peak "
        f"{_f(m.inference_peak_mb, 1)}, anon/file {_f(m.rss_anon_mb, 1)}/{_f(m.rss_file_mb, 1)}, "
        f"growth {_f(m.growth_mb, 2)} MB"
    )


def _board_note(b: BoardState) -> str:
    temp = (
        f"temp {_f(b.temp_start_c, 1)}->{_f(b.temp_end_c, 1)} C (max {_f(b.temp_max_c, 1)}, {b.temp_method})"
        if b.temp_start_c is not None
        else "temp unavailable"
    )
    freq = (
        f"freq {_f(b.freq_start_mhz, 0)}->{_f(b.freq_end_mhz, 0)} MHz (max {_f(b.freq_max_mhz, 0)}, "
        f"{b.governor or '-'})"
        if b.freq_start_mhz is not None
        else "cpufreq unavailable"
    )
    throttled = "unavailable" if b.throttled_now is None else f"{b.throttled_now} (0x{b.throttled_bits:x})"
    steal = "-" if b.steal_pct is None else f"{b.steal_pct:.2f}%"
    return (
        f"board: {temp}; {freq}; throttled {throttled}; "
        f"PSI cpu some avg10 {_f(b.psi_cpu_some_avg10, 2)}; steal {steal}"
    )


def _energy_note(e: EnergyStats, cpu: CpuStats | None) -> str:
    energy = (
        "unavailable (no sensor)"
        if e.method == "unavailable"
        else (
            f"{_f(e.joules_per_inference and e.joules_per_inference * 1000, 4)} mJ/inference, "
            f"{_f(e.avg_power_w, 2)} W avg ({e.method})"
        )
    )
    return (
        f"energy: {energy}; CPU {_f(cpu.cpu_s_per_inference * 1000 if cpu else None, 4)} ms CPU per inference"
    )


def _ops_note(profile: tuple[OpProfile, ...]) -> str:
    """The first 8 operators of the profile: share and mean time, or where a delegated op ran."""
    top = ", ".join(
        f"{p.node} {p.op_type} {p.share * 100:.0f}% {p.mean_ms:.3f} ms"
        if p.mean_ms
        else f"{p.op_type}->{p.provider}"
        for p in profile[:8]
    )
    return f"ops: {top}"


def format_comparison(groups: list[list[ResultRecord]]) -> str:
    rows = [["model", "MB", "p50 ms", "p90 ms", "peak MB", "speedup"]]
    base = None
    for records in groups:
        ok = [r for r in records if r.status == "ok" and r.latency]
        a = records[0].artifact
        if not ok:
            rows.append([a.name, f"{a.size_bytes / 1e6:.3f}", "FAILED", "-", "-", "-"])
            continue
        best = min(ok, key=lambda r: r.latency.p50_ms)  # type: ignore[union-attr]
        p50 = best.latency.p50_ms  # type: ignore[union-attr]
        base = base if base is not None else p50
        mem = best.memory.inference_peak_mb if best.memory else None
        rows.append(
            [
                a.name,
                f"{a.size_bytes / 1e6:.3f}",
                _ms(p50),
                _pct(best.latency, "p90_ms"),  # type: ignore[arg-type]
                _f(mem, 1),
                f"{base / p50:.2f}x" if p50 > 0 else "-",
            ]
        )
    return "comparison (best configuration of each; speedup vs the first model):\n" + _table(rows)


@click.command("bench")
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--quick", "preset", flag_value="quick", help="Seconds, not minutes: 20 runs / 0.2 s, short warmup."
)
@click.option("--thorough", "preset", flag_value="thorough", help="300 runs / 30 s, 3 repeats.")
@click.option("--threads", help="Thread counts to sweep, e.g. 1,2,4 (default: the runtime's default).")
@click.option("--batch", default="1", show_default=True, help="Batch size(s), e.g. 1 or 1,4,8.")
@click.option(
    "--shape", "shapes", multiple=True, metavar="NAME=1x3x224x224", help="Set a dynamic input shape."
)
@click.option(
    "--inputs", type=click.Path(path_type=Path), help="Input data: .npy (one input) or .npz (by name)."
)
@click.option(
    "--runs", type=click.IntRange(min=1), help="Minimum timed runs (default 100; --quick 20; --thorough 300)."
)
@click.option(
    "--min-time",
    type=click.FloatRange(min=0),
    help="Minimum timed seconds (default 10; --quick 0.2; --thorough 30).",
)
@click.option(
    "--max-time",
    type=click.FloatRange(min=0),
    help="Cap on timed seconds, never below --min-time (default 60; --quick 2; --thorough 180): ends a slow "
    "model's runs before --runs.",
)
@click.option(
    "--max-runs",
    type=click.IntRange(min=1),
    help="Cap on timed runs (default: none). Can end the runs before --min-time; the output says so.",
)
@click.option("--repeats", type=click.IntRange(min=1), help="Repeat each configuration in a fresh process.")
@click.option("--profile-ops", is_flag=True, help="Per-operator profile (ORT trace; LiteRT delegated ops).")
@click.option(
    "--cooldown", type=float, metavar="CELSIUS", help="Wait until the board is below this temperature."
)
@click.option(
    "--optimization",
    type=click.Choice(["disable", "basic", "extended", "all"]),
    default="all",
    show_default=True,
    help="ONNX Runtime graph optimization level.",
)
@click.option("--no-isolate", is_flag=True, help="Run in this process (memory figures then include it).")
@click.option("--json", "as_json", is_flag=True, help="Print the result records as a JSON array on stdout.")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the records (JSON array)."
)
@click.option("--device-id", help="Device id in the records (default: hostname).")
def bench(
    models: tuple[Path, ...],
    preset: str | None,
    threads: str | None,
    batch: str,
    shapes: tuple[str, ...],
    inputs: Path | None,
    runs: int | None,
    min_time: float | None,
    max_time: float | None,
    max_runs: int | None,
    repeats: int | None,
    profile_ops: bool,
    cooldown: float | None,
    optimization: str,
    no_isolate: bool,
    as_json: bool,
    out: Path | None,
    device_id: str | None,
) -> None:
    """Benchmark ONNX / TFLite models on this machine with a rigorous protocol.

    Timed runs go on until at least --runs runs AND at least --min-time seconds. Two caps end them
    earlier: --max-time (never below --min-time) stops a slow model with fewer than --runs runs, and
    --max-runs, if set (no run cap by default), can stop before --min-time. Every run is kept up to
    65,536 runs; past that a log histogram (percentiles and CI within 0.049%), in bounded memory. p90 is
    shown from 64 runs on and p99 from 662 (MLPerf's floors): below, "n<64" / "n<662".

    Several MODELs give a side-by-side comparison. Exit code 1 when any model failed.
    """
    from agent.measure.inputs import parse_shapes
    from agent.probes.facts import device_info

    try:
        batches = _int_list(batch, "--batch") or (1,)
        options = BenchOptions.preset(
            preset or "default",
            threads=_int_list(threads, "--threads"),
            batch=batches[0],
            batches=batches if len(batches) > 1 else (),
            shapes=parse_shapes(shapes),
            inputs=inputs,
            profile_ops=profile_ops,
            cooldown_c=cooldown,
            isolate=not no_isolate,
            optimization=optimization,
        )
    except EdgebenchError as exc:
        raise click.ClickException(str(exc)) from None
    options = _with_flags(options, runs, min_time, max_time, max_runs, repeats)
    device = device_info(device_id)
    echo = (lambda s: click.echo(s, err=True)) if as_json else click.echo
    groups: list[list[ResultRecord]] = []
    for model in models:
        records = run_benchmark(model, options, device=device)
        groups.append(records)
        echo(format_model(records) + "\n")
    if len(groups) > 1:
        echo(format_comparison(groups))
    payload = json.dumps([r.to_dict() for g in groups for r in g], indent=1, allow_nan=False)
    if out is not None:
        try:
            out.write_text(payload + "\n")
        except OSError as exc:
            raise click.ClickException(f"--out {out}: {exc.strerror or exc}") from None
    if as_json:
        click.echo(payload)
    failed = [r for g in groups for r in g if r.status != "ok"]
    if failed:
        reasons = sorted({r.error or r.status for r in failed})
        raise click.ClickException(
            f"{len(failed)} of {sum(map(len, groups))} benchmark(s) failed: " + "; ".join(reasons)
        )


def _with_flags(
    options: BenchOptions,
    runs: int | None,
    min_time: float | None,
    max_time: float | None,
    max_runs: int | None,
    repeats: int | None,
) -> BenchOptions:
    """The preset's protocol with the stop-rule flags; a cap set below its floor is a usage error (a
    --min-time above the preset's time cap raises the cap to it)."""
    p = options.protocol
    floor_s = p.min_time_s if min_time is None else min_time
    if max_time is not None and max_time < floor_s:
        raise click.UsageError(
            f"--max-time {max_time:g} is below the minimum time {floor_s:g} s (--min-time): a time cap "
            "never cuts the time floor"
        )
    floor_runs = p.min_runs if runs is None else runs
    if max_runs is not None and max_runs < floor_runs:
        raise click.UsageError(f"--max-runs {max_runs} is below the minimum runs {floor_runs} (--runs)")
    changes = {
        k: v
        for k, v in (
            ("min_runs", runs),
            ("min_time_s", min_time),
            ("max_time_s", max_time),
            ("max_runs", max_runs),
            ("repeats", repeats),
        )
        if v is not None
    }
    return options.with_protocol(**changes) if changes else options
