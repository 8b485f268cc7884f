"""The one jinja2 environment of every rendered output (bench/templates): undefined names are
errors, blocks trimmed, and HTML templates (*.html.j2) autoescaped while markdown is not."""

from __future__ import annotations

from functools import cache

import jinja2

from bench.core.paths import TEMPLATES_DIR


@cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR), undefined=jinja2.StrictUndefined,
                              autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",),
                                                                  default_for_string=False, default=False),
                              trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def render(template: str, **context) -> str:
    """`template` (a file name in bench/templates) rendered with `context`."""
    return environment().get_template(template).render(**context)
