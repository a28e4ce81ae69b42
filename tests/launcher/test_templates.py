"""The quoting filters every template value passes through, and the template machinery."""

import subprocess

import pytest
import yaml

from simsiam_job.errors import TemplateError
from simsiam_job.templates import environment, parse_yaml_stream, render_text, to_sh, to_yaml

HOSTILE = [
    "it's \"quoted\"", "line1\nline2\r\n", "{{ secret }}", "{% raw %}", "$(rm -rf ~)", "`id`",
    "a: b", "- item", "# not a comment", "yes", "no", "on", "null", "~", "0x1F", "1e5", "007", "",
    " padded ", "tab\there", "\x7f\x85\u2028\u2029\ufeff", "é 😀 中文", "\ud800", "back\\slash",
    "--- \n...", "&anchor *alias !!python/object:os.system",
]


@pytest.mark.parametrize("value", HOSTILE + [0, -3, 1e-05, 1e100, 2.5, float("inf"), True, None,
                                             ["a b", "c: d"], {"key: x": ["{{ y }}", 1]}])
def test_yaml_filter_round_trips_exactly(value):
    rendered = environment().from_string("metadata:\n  note: {{ v | yaml }}\n").render(v=value)
    assert yaml.safe_load(rendered)["metadata"]["note"] == value


# (a lone surrogate cannot travel through a process's argv, so it is checked with YAML only)
@pytest.mark.parametrize("value", [v for v in HOSTILE if "\ud800" not in v])
def test_sh_filter_gives_bash_the_exact_word(value):
    script = environment().from_string("printf '%s' {{ v | sh }}").render(v=value)
    out = subprocess.run(["bash", "-c", script], capture_output=True, check=True).stdout
    assert out == value.encode()


def test_sh_filter_quotes_each_item_of_a_list():
    words = ["simsiam-train", "-o", "Global.note=$(id) {{ x }}", "two words"]
    out = subprocess.run(["bash", "-c", "printf '%s\\n' " + to_sh(words)], capture_output=True,
                         text=True).stdout
    assert out.splitlines() == words


def test_missing_variable_is_an_error_not_an_empty_string():
    with pytest.raises(Exception, match="undefined"):
        environment().from_string("name: {{ nme | yaml }}").render(name="x")


def test_unknown_template_and_bad_yaml_give_clear_errors():
    with pytest.raises(TemplateError, match="not found"):
        render_text("k8s/no-such-template.yaml.j2")
    with pytest.raises(TemplateError, match="not valid YAML"):
        parse_yaml_stream("a: [1, 2\n", "k8s/x.yaml.j2")
    with pytest.raises(TemplateError, match="not a mapping"):
        parse_yaml_stream("- 1\n")
    assert parse_yaml_stream("---\na: 1\n---\n---\nb: 2\n") == [{"a": 1}, {"b": 2}]


def test_yaml_filter_refuses_values_it_cannot_represent():
    with pytest.raises(TypeError):
        to_yaml(object())
