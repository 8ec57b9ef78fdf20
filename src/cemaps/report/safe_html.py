"""Safe names for strings that come from a results folder: HTML ids, file names, URLs, script hashes.

Every string a results folder carries (metric names, model and prompt ids, file names) is
user data: it is HTML-escaped where it is shown, and never used raw where the HTML or the
file system would read it as structure. :func:`slug` makes ids and figure file names,
:func:`href` makes relative links, and :func:`script_hash` lets the page's
Content-Security-Policy allow its own script and no other.

Example:
    >>> slug('"><img src=x onerror=alert(1)>')
    'img-src-x-onerror-alert-1-4c79c325'
    >>> slug("alignment_drop")
    'alignment_drop'
    >>> href("../results/cem_a b.csv")
    '../results/cem_a%20b.csv'
"""

from __future__ import annotations

import base64
import hashlib
import re
from html import escape
from urllib.parse import quote

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def slug(text: str) -> str:
    """Letters, digits, '_' and '-' only; a string that had to change gets 8 hex digits of its SHA-256,
    so two different strings never share a slug (``"a b"`` and ``"a-b"`` stay apart)."""
    text = str(text)
    cleaned = _UNSAFE.sub("-", text).strip("-")[:60]
    if cleaned == text and text:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{cleaned}-{digest}" if cleaned else digest


def href(relative: str) -> str:
    """A relative link for an ``href`` attribute: percent-encoded (so ``javascript:`` or ``#`` in a file
    name is a path, never a scheme or fragment), then HTML-escaped."""
    return escape(quote(str(relative), safe="/"))


def script_hash(script: str) -> str:
    """The CSP source expression (``'sha256-...'``) that allows exactly this inline script."""
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return f"'sha256-{digest}'"
