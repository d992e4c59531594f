"""The ``ErrorReason`` table of ``docs/api.md``, generated from ``common.proto``.

Run as ``python -m llmesh.tools.reasons_doc`` to rewrite the table between the
``<!-- error-reasons:begin -->`` and ``<!-- error-reasons:end -->`` markers; a test
fails when the page and the proto disagree. The proto's comment on each value reads
``CODE: meaning. Retryable...`` and becomes one row.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PROTO = ROOT / "protos" / "llmesh" / "v1" / "common.proto"
DOC = ROOT / "docs" / "api.md"
BEGIN, END = "<!-- error-reasons:begin -->", "<!-- error-reasons:end -->"
_VALUE = re.compile(r"^\s*ERROR_REASON_([A-Z0-9_]+)\s*=\s*\d+;")
_COMMENT = re.compile(r"^\s*//\s?(.*)$")


def reasons(proto_text: str) -> list[tuple[str, str, str]]:
    """``(reason, status code, description)`` for each value but UNSPECIFIED, in order."""
    body = proto_text.split("enum ErrorReason {", 1)[1].split("\n}", 1)[0]
    rows: list[tuple[str, str, str]] = []
    comment: list[str] = []
    for line in body.splitlines():
        if match := _COMMENT.match(line):
            comment.append(match.group(1).strip())
        elif match := _VALUE.match(line):
            text = " ".join(comment)
            code, _, meaning = text.partition(": ")
            if match.group(1) != "UNSPECIFIED":
                rows.append((match.group(1), code, meaning))
            comment = []
        else:  # a blank line ends a section comment
            comment = []
    return rows


def table(proto_text: str) -> str:
    """The markdown table, markers included."""
    lines = [BEGIN, "| reason | code | meaning, and whether to retry |", "|---|---|---|"]
    lines += [f"| `{r}` | `{c}` | {m} |" for r, c, m in reasons(proto_text)]
    return "\n".join([*lines, END])


def render(doc_text: str, proto_text: str) -> str:
    """``doc_text`` with its table replaced by the one from ``proto_text``."""
    head, rest = doc_text.split(BEGIN, 1)
    _old, tail = rest.split(END, 1)
    return head + table(proto_text) + tail


def main() -> None:
    DOC.write_text(render(DOC.read_text(), PROTO.read_text()))
    print(f"wrote the ErrorReason table of {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
