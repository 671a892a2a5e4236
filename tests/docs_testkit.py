"""The documentation's code examples, as the tests run them."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def doc_block(first_line: str, page: str = "extending.md") -> str:
    """The ```python block of ``docs/<page>`` that starts with ``first_line``."""
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)
    return next(b for b in blocks if b.startswith(first_line))


def exec_doc_block(first_line: str, module: str, page: str = "extending.md") -> dict:
    """Run that block as the module ``module`` (registering what it registers); its namespace."""
    namespace: dict = {"__name__": module}
    exec(compile(doc_block(first_line, page), f"{module}.py", "exec"), namespace)
    return namespace
