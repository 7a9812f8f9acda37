"""Reading judge replies: Python-dict strings, JSON, code fences, extra text around them.

Order: every balanced ``{...}`` block in the reply (code fences removed) is tried as JSON, then as a
Python literal (``ast.literal_eval``: literals only, nothing is executed); the first one that holds the
expected keys with valid values wins. Failing that, ``'score': 4`` / ``score = 4`` / ``"pred": "yes"``
key-value text is read. Anything else is *malformed*: a missing judgement, never a 0.

Valid values: ``score`` a number (not a bool) in [0, 5]; ``pred`` ``yes``/``no`` (any case);
``choice`` a single letter or ``none``.
"""

from __future__ import annotations

import ast
import json
import math
import re
from typing import Any

_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*|```")


def _balanced_blocks(text: str) -> list[str]:
    blocks, depth, start = [], 0, -1
    quote: str | None = None
    for i, char in enumerate(text):
        if quote:
            if char == quote and text[i - 1] != "\\":
                quote = None
            continue
        if char in ("'", '"') and depth > 0:
            # an apostrophe inside a word ("don't") is not a quote
            if char == "'" and i > 0 and text[i - 1].isalpha() and i + 1 < len(text) and text[i + 1].isalpha():
                continue
            quote = char
        elif char == "{":
            if depth == 0:
                start = i
            depth += 1
        elif char == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                blocks.append(text[start : i + 1])
    return blocks


def _literal(block: str) -> Any:
    try:
        return json.loads(block)
    except (json.JSONDecodeError, ValueError):
        pass
    try:
        return ast.literal_eval(block)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    relaxed = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", re.sub(r"\bnull\b", "None", block)))
    relaxed = re.sub(r"([{,]\s*)([A-Za-z_]\w*)(\s*:)", r"\1'\2'\3", relaxed)  # {score: 4}
    try:
        return ast.literal_eval(relaxed)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _valid(key: str, value: Any) -> tuple[bool, Any]:
    if key == "score":
        if isinstance(value, bool):
            return False, None
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                return False, None
        if isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 5:
            return True, float(value)
        return False, None
    if key == "pred":
        if isinstance(value, str) and value.strip().lower().strip(".") in ("yes", "no"):
            return True, value.strip().lower().strip(".")
        return False, None
    if key == "choice":
        if isinstance(value, str) and (
            value.strip().lower() == "none" or re.fullmatch(r"\(?[A-Za-z]\)?", value.strip())
        ):
            return True, value.strip().strip("()").upper() if value.strip().lower() != "none" else "none"
        return False, None
    return True, value


def parse_judge_reply(text: str | None, keys: tuple[str, ...]) -> tuple[dict | None, str]:
    """Return ``(values, "")`` with every key in ``keys`` validated, or ``(None, reason)``."""
    if not text or not text.strip():
        return None, "empty reply"
    body = _FENCE.sub("", text)
    problems = []
    for block in _balanced_blocks(body):
        data = _literal(block)
        if not isinstance(data, dict):
            continue
        lowered = {str(k).strip().lower(): v for k, v in data.items()}
        if not all(k in lowered for k in keys):
            problems.append(f"dict without {[k for k in keys if k not in lowered]}")
            continue
        values, ok = {}, True
        for key in keys:
            good, value = _valid(key, lowered[key])
            if not good:
                problems.append(f"invalid {key} {lowered[key]!r}")
                ok = False
                break
            values[key] = value
        if ok:
            return values, ""
    values = {}
    for key in keys:
        pattern = rf"['\"]?\b{key}\b['\"]?\s*[:=]\s*['\"]?([A-Za-z]+|-?\d+(?:\.\d+)?)"
        found = re.search(pattern, body, re.IGNORECASE)
        if not found:
            break
        good, value = _valid(key, found.group(1))
        if not good:
            problems.append(f"invalid {key} {found.group(1)!r}")
            break
        values[key] = value
    else:
        return values, ""
    reason = "; ".join(problems) if problems else f"no {', '.join(keys)} found"
    return None, f"malformed reply ({reason})"
