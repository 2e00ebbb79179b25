"""reST roles and literal blocks of docstrings become Markdown for the API pages."""

from __future__ import annotations

from tools.site.api_docstrings import rst_to_markdown

DOC = """Summary with :func:`top_k`, :class:`~pkg.cache.KVCache` and :mod:`torch`.

Example::

    from pkg import H2O
    H2O(budget=0.2)

A file looks like this::

    {"id": 1}

Done.

```python
kept = ":func:`as_written`"
```
"""


def _resolve(name: str, role: str) -> str | None:
    return {"top_k": "pkg.scores.top_k", "pkg.cache.KVCache": "pkg.cache.KVCache"}.get(name)


def test_roles_become_code_linked_when_the_target_resolves():
    text = rst_to_markdown(DOC, _resolve)
    assert '<autoref identifier="pkg.scores.top_k" optional><code>top_k</code></autoref>' in text
    assert '<autoref identifier="pkg.cache.KVCache" optional><code>KVCache</code></autoref>' in text  # "~": last part
    assert "<code>torch</code>" in text and 'identifier="torch"' not in text  # outside the package: plain code
    assert 'kept = ":func:`as_written`"' in text  # inside a Markdown fence: untouched


def test_literal_blocks_become_fences_and_example_a_google_section():
    text = rst_to_markdown(DOC)
    assert "Examples:\n    ```python\n    from pkg import H2O\n    H2O(budget=0.2)\n    ```\n" in text
    assert 'A file looks like this:\n\n```\n{"id": 1}\n```\n' in text
    assert "::" not in text.replace(":func:`as_written`", "")
    assert text.rstrip().endswith("```") and "Done." in text
