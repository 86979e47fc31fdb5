"""`edgebench browser serve`: a thin click wrapper over :mod:`edgebench.browser.server`."""

from __future__ import annotations

from pathlib import Path

import click

from edgebench.browser.server import PageServer, PageServerError, page_url


@click.group("browser")
def browser_group() -> None:
    """The browser agent: a page that joins the fleet with onnxruntime-web."""


@browser_group.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@click.option("--broker", help="MQTT over WebSockets URL for the page, e.g. ws://127.0.0.1:9001")
@click.option("--device", help="the page's device id")
@click.option("--key", "keys", multiple=True, help="trusted Ed25519 public key (repeatable)")
@click.option("--tag", "tags", multiple=True, help="device tag (repeatable)")
@click.option("--budget-mb", type=click.FloatRange(min=0, min_open=True), help="artifact size budget")
@click.option(
    "--model", "models", multiple=True, type=click.Path(path_type=Path), help="serve at /model/NAME"
)
def serve(
    host: str,
    port: int,
    broker: str | None,
    device: str | None,
    keys: tuple[str, ...],
    tags: tuple[str, ...],
    budget_mb: float | None,
    models: tuple[Path, ...],
) -> None:
    """Serve the browser agent page (COOP/COEP for wasm threads) and print its URL."""
    server = PageServer(host=host, port=port, models=list(models))
    try:
        server.bind()
    except PageServerError as exc:
        raise click.ClickException(str(exc)) from None
    url = page_url(server.url, broker=broker, device=device, keys=keys, tags=tags, budget_mb=budget_mb)
    click.echo(f"browser agent page: {url}")
    for model in models:
        click.echo(f"model: {server.model_url(model)}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
