"""Root `edgebench` click group. Sub-commands are registered by import path and loaded lazily.

A command whose module is not part of this install (e.g. the collector on a Pi with only the
`agent` extra) is still listed, and running it says which extra to install instead of a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

from wire import __version__

# name -> (module:attribute, extra that provides its dependencies)
COMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("agent.measure.cli:bench", "agent"),
    "agent": ("agent.service.cli:agent_group", "agent"),
    "keys": ("agent.service.cli:keys_group", "agent"),
    "collector": ("collector.service.cli:collector_group", "collector"),
    "fleet": ("collector.fleet.cli:fleet_group", "collector"),
    "report": ("collector.reports.cli:report_group", "collector"),
    "convert": ("converter.cli:convert", "converter"),
    "demo": ("edgebench.demo_cli:demo", "all"),
    "browser": ("edgebench.browser.cli:browser_group", "all"),
}


def _module_exists(path: str) -> bool:
    module = path.partition(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(
            name for name, (path, _) in COMMANDS.items() if _module_exists(path) and self._load(name)
        )

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        return self._load(cmd_name) or self._missing(cmd_name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        path, _extra = COMMANDS[name]
        module_name, _, attr = path.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            return None
        command = getattr(module, attr, None)
        return command if isinstance(command, click.Command) else None

    @staticmethod
    def _missing(name: str) -> click.Command:
        path, extra = COMMANDS[name]
        module_name = path.partition(":")[0]

        @click.command(name=name, help=f"(unavailable here: install edgebench[{extra}])")
        def unavailable() -> None:
            try:
                importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                raise click.ClickException(
                    f"'edgebench {name}' needs the '{extra}' extra (missing module {exc.name!r}): "
                    f"pip install 'edgebench[{extra}]'"
                ) from None
            raise click.ClickException(f"'edgebench {name}' is not available in this build")

        return unavailable


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgebench")
def main() -> None:
    """edgebench: optimize a model, benchmark every variant on a fleet of edge devices, and tell
    which variant to ship to which device."""
