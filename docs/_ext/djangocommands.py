"""``.. django-command:: NAME``: a management command's reference, from its parser.

The usage line and every option the command adds to Django's common ones are
read from the command's own argparse parser, so the page can't fall behind.
"""

from __future__ import annotations

import argparse

from django.core.management import get_commands, load_command_class
from django.core.management.base import BaseCommand
from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective


def own_actions(name: str) -> tuple[argparse.ArgumentParser, list[argparse.Action]]:
    """The command's parser, and the arguments it adds to BaseCommand's."""
    command = load_command_class(get_commands()[name], name)
    parser = command.create_parser("manage.py", name)
    common = {
        option for action in base_actions(name) for option in action.option_strings
    }
    actions = [
        action
        for action in parser._actions
        if not common.intersection(action.option_strings)
    ]
    return parser, actions


def base_actions(name: str) -> list[argparse.Action]:
    """The arguments every Django command takes."""
    return BaseCommand().create_parser("manage.py", name)._actions


def common_options(parser: argparse.ArgumentParser, name: str) -> list[str]:
    """The long forms of Django's common options that the command takes."""
    taken = {option for action in parser._actions for option in action.option_strings}
    return [
        action.option_strings[-1]
        for action in base_actions(name)
        if action.option_strings
        and action.option_strings[-1] in taken
        and action.option_strings[-1] not in ("--help", "--version")
    ]


def invocation(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    if not action.option_strings:
        return formatter._format_args(action, action.dest)
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    args = formatter._format_args(action, action.dest.upper())
    return ", ".join(f"{option} {args}" for option in action.option_strings)


class DjangoCommand(SphinxDirective):
    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        if name not in get_commands():
            raise self.error(f"No management command named {name!r}.")
        parser, actions = own_actions(name)
        formatter = parser._get_formatter()
        usage = " ".join(
            ["python manage.py", name]
            + [
                invocation(parser, action)
                if action.required or not action.option_strings
                else f"[{invocation(parser, action).split(', ')[-1]}]"
                for action in actions
            ]
        )
        lines = [
            f".. program:: {name}",
            "",
            ".. code-block:: text",
            "",
            f"   {usage}",
            "",
            parser.description or "",
            "",
        ]
        for action in actions:
            lines += [
                f".. option:: {invocation(parser, action)}",
                "",
                f"   {formatter._expand_help(action) if action.help else ''}",
                "",
            ]
        common = ", ".join(f"``{option}``" for option in common_options(parser, name))
        lines += [f"It also takes Django's common options: {common}.", ""]
        return self.parse_text_to_nodes("\n".join(lines))


def setup(app: Sphinx) -> dict:
    app.add_directive("django-command", DjangoCommand)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
