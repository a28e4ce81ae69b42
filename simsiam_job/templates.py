"""Jinja templates for the job manifests (k8s/) and batch scripts (slurm/).

The templates live in the repository's top-level ``k8s/`` and ``slurm/`` folders. ``_templates/``
holds two symlinks to them, so an editable install reads the repository's files and a built wheel
carries copies (pyproject.toml's package-data follows the links). Template names are therefore
``"k8s/<file>"`` and ``"slurm/<file>"``.

Safety rule: every value that reaches a template passes through one of two filters:
``yaml`` (a YAML scalar/list/map that parses back to exactly the value) or ``sh`` (shell quoting).
StrictUndefined turns a missing variable into an error instead of an empty string.
"""

from __future__ import annotations

import functools
import json
import math
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from simsiam_job.errors import TemplateError

TEMPLATES_DIR = Path(__file__).parent / "_templates"

# Characters PyYAML refuses in a stream or folds as line breaks inside a quoted scalar; JSON leaves
# them raw when ensure_ascii=False, so they are escaped explicitly (\uXXXX is valid in both).
_YAML_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff\ufeff\ufffe\uffff]")


def to_yaml(value: Any) -> str:
    """One-line YAML (flow style) that ``yaml.safe_load`` turns back into exactly ``value``."""
    if value is None or isinstance(value, (bool, int, str)):
        text = json.dumps(value, ensure_ascii=False)
        return _YAML_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        # YAML 1.1 (PyYAML) reads "1e-05" as a string: a float needs a dot before the exponent.
        if "e" in text and "." not in text:
            text = text.replace("e", ".0e")
        return text
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{to_yaml(str(k))}: {to_yaml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(to_yaml(v) for v in value) + "]"
    raise TypeError(f"cannot put a {type(value).__name__} into YAML: {value!r}")


def to_sh(value: Any) -> str:
    """Shell-quoted word; a list or tuple becomes quoted words separated by spaces."""
    if isinstance(value, (list, tuple)):
        return " ".join(to_sh(v) for v in value)
    if value is None or isinstance(value, Mapping):
        raise TypeError(f"cannot put {value!r} into a shell script")
    return shlex.quote(str(value))


@functools.cache
def environment():
    import jinja2  # imported on first render only: keeps the CLI's start-up fast

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    def strict(quote):
        def quote_defined(value):
            if isinstance(value, jinja2.Undefined):
                str(value)  # StrictUndefined raises "'x' is undefined" here
            return quote(value)
        return quote_defined

    env.filters["yaml"] = strict(to_yaml)
    env.filters["sh"] = strict(to_sh)
    return env


def render_text(template: str, **ctx: Any) -> str:
    """Render ``template`` (e.g. ``"slurm/sbatch.sh.j2"``) to text."""
    import jinja2

    try:
        return environment().get_template(template).render(**ctx)
    except jinja2.TemplateNotFound as err:
        raise TemplateError(f"template {err.name!r} not found under {TEMPLATES_DIR}") from None
    except (jinja2.TemplateError, TypeError) as err:
        raise TemplateError(f"template {template!r} failed to render: {err}") from None


def parse_yaml_stream(text: str, source: str = "<rendered>") -> list[dict]:
    """Parse a rendered YAML stream back into dicts (empty documents dropped); every document
    must be a mapping."""
    import yaml

    # libyaml's parser when present: same safe semantics, and most of render's time otherwise
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        docs = [d for d in yaml.load_all(text, Loader=loader) if d is not None]
    except yaml.YAMLError as err:
        raise TemplateError(f"{source} is not valid YAML: {' '.join(str(err).split())}") from None
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict):
            raise TemplateError(f"{source}: document {i} is a {type(doc).__name__}, not a mapping")
    return docs


def render_yaml_stream(template: str, **ctx: Any) -> list[dict]:
    """Render a YAML template and parse it back: what a backend sends is what was parsed here."""
    return parse_yaml_stream(render_text(template, **ctx), source=template)
