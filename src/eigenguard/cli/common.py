"""What every command shares: one line for every bad input (exit 2), the error console, KEY=VALUE settings."""

import sys
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from eigenguard.errors import EigenguardError

err_console = Console(stderr=True)


class OneLineUsageErrors(TyperGroup):
    """Every bad input is one line naming it, exit 2: a flag's bad value or an unknown flag (click would print
    the usage box) and an EigenguardError from any command, mapped here once."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as e:  # the base of click's usage errors, as typer ships them
            if type(e).__name__ == "NoArgsIsHelpError":  # a bare command: its help, as before
                e.show()  # type: ignore[attr-defined]
                sys.exit(2)
            message = e.format_message() if hasattr(e, "format_message") else str(e)
            errors = getattr(e.__cause__, "errors", None)  # typer checks a flag's type with pydantic
            param = getattr(e, "param", None)
            if callable(errors) and errors() and param is not None:
                flag = "/".join(getattr(param, "opts", [])) or str(param.name)
                message = f"invalid {flag} = {errors()[0].get('input')!r}: {errors()[0].get('msg', message)}"
            err_console.print(
                f"[bold red]error:[/] {escape(' '.join(message.split()))}", highlight=False, soft_wrap=True
            )
            sys.exit(2)
        except EigenguardError as e:  # bad input found by any command: the one place it becomes a line
            err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except KeyboardInterrupt:  # finished cells and epochs are kept; `train` says how to resume
            sys.exit(130)
        except typer.Abort:
            err_console.print("Aborted.")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def parse_settings(items: list[str] | None, flag: str = "--set", example: str = "defense.k=40") -> dict[str, Any]:
    """KEY=VALUE items as settings; values are read as YAML (numbers, booleans, lists, null)."""
    settings: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise EigenguardError(f"invalid {flag} '{item}': expected KEY=VALUE, e.g. {example}")
        try:
            settings[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise EigenguardError(f"invalid {flag} '{item}': the value is not valid YAML") from None
    return settings


Opt = typer.Option
