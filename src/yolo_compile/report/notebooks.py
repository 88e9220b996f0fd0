"""The executed notebooks of a run as HTML (nbconvert: images inlined, inputs collapsed, parameters open)."""

from __future__ import annotations

import functools
import html
from pathlib import Path

from yolo_compile import fileio

_NB_TEMPLATE = """{%- extends 'classic/base.html.j2' -%}
{% block input_group -%}
{%- set tags = cell.metadata.get('tags', []) -%}
<details class="nb-in"{% if 'injected-parameters' in tags or 'parameters' in tags %} open{% endif %}>
<summary>{% if 'injected-parameters' in tags %}parameters this run used{% elif 'parameters' in tags %}default \
parameters{% else %}code{% endif %} [{{ cell.execution_count or ' ' }}]</summary>{{ super() }}</details>
{%- endblock input_group %}
{% block stream_stdout -%}
{%- set n = output.text.count('\n') -%}
{%- if n > 12 %}<details class="nb-log"><summary>printed output ({{ n }} lines)</summary>{{ super() }}</details>
{%- else %}{{ super() }}{% endif -%}
{%- endblock stream_stdout %}
{% block stream_stderr -%}
{%- set n = output.text.count('\n') -%}
{%- if n > 12 %}<details class="nb-log"><summary>log, stderr ({{ n }} lines)</summary>{{ super() }}</details>
{%- else %}{{ super() }}{% endif -%}
{%- endblock stream_stderr %}
"""


def render_notebook(path: Path) -> str:
    """Return an executed notebook as HTML (nbconvert; images inlined, inputs collapsed, parameters open).

    Remembered by content: `workflow` renders each notebook when its stage ends, on an otherwise idle core, and
    the report at the end reuses it unless the file changed since.
    """
    return _render(str(Path(path).resolve()), fileio.sha256(path))


@functools.lru_cache(maxsize=32)
def _render(path: str, digest: str) -> str:  # digest: the file's sha256, the key's content half
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor

    exporter = HTMLExporter(extra_loaders=[jinja2.DictLoader({"yc_report.j2": _NB_TEMPLATE})],
                            template_file="yc_report.j2")
    exporter.register_preprocessor(CoalesceStreamsPreprocessor(enabled=True), enabled=True)  # progress bars: last state
    body, _ = exporter.from_notebook_node(nbformat.read(path, as_version=4))
    return body


def notebooks_html(run_dir: Path, manifest: dict) -> str:
    """Return every executed notebook of the run, each in its own section."""
    parts = []
    for stage, info in (manifest.get("stages") or {}).items():
        path = run_dir / str(info.get("notebook") or "")
        if not info.get("notebook") or not path.is_file():
            continue
        try:
            body = render_notebook(path)
        except Exception as e:  # noqa: BLE001 - a report must still be written; say what went wrong instead
            body = f"<p class='failed'>could not render {html.escape(path.name)}: {html.escape(repr(e))}</p>"
        parts.append(f"<details class='nb' id='nb-{html.escape(stage)}'{' open' if info.get('status') == 'failed' else ''}>"
                     f"<summary>{html.escape(path.name)} <span class='{html.escape(str(info.get('status')))}'>"
                     f"{html.escape(str(info.get('status')))}</span></summary>{body}</details>")
    return "<h2>Executed notebooks</h2>" + "".join(parts) if parts else ""


def pygments_css() -> str:
    try:
        from pygments.formatters import HtmlFormatter

        return HtmlFormatter(style="default").get_style_defs(".highlight")
    except ImportError:
        return ""
