"""The terminal consoles of the command line: text is printed as it is, never as markup.

Rich reads square brackets as style markup (`[red]`), so a message such as
`pip install 'kanal[embedded]'`, a name pattern `^[a-z0-9][a-z0-9_-]{0,62}$`
or an expression `tax_code in [standard, reduced]` would lose its brackets,
and a record key could restyle the terminal. Every console made here has
markup and highlighting switched off, and that holds for everything it
renders: plain strings, table cells, titles and captions. Styling is added
on purpose only, with `rich.text.Text` (see `styled`), which never parses
the text it carries.
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text


def console(stderr: bool = False) -> Console:
    """A console that prints strings literally (no markup, no highlighting)."""
    return Console(stderr=stderr, soft_wrap=True, markup=False, highlight=False)


def styled(label: str, style: str, text: str = "") -> Text:
    """`label` in `style`, followed by `text` verbatim: `styled("error:", "red", message)`."""
    return Text.assemble((label, style), (f" {text}" if text else ""))
