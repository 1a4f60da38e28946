"""The report's document: blocks (headings, paragraphs, tables, images) rendered twice, as Markdown and as HTML,
and the number formatting every table uses."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any


def fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        a = abs(v)
        if a != 0 and (a < 10**-nd or a >= 1e6):
            return f"{v:.3g}"
        return f"{v:,.{nd}f}"
    return str(v)


class Doc:
    """Blocks rendered twice: Markdown and HTML."""

    def __init__(self, title: str):
        self.title = title
        self.blocks: list[tuple[str, Any]] = []

    def h(self, text: str, level: int = 2):
        self.blocks.append(("h", (level, text)))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]):
        self.blocks.append(("table", (list(headers), [[fmt(c) for c in r] for r in rows])))

    def img(self, path: str, alt: str):
        self.blocks.append(("img", (path, alt)))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, b in self.blocks:
            if kind == "h":
                out += ["#" * b[0] + " " + b[1], ""]
            elif kind == "p":
                out += [b, ""]
            elif kind == "table":
                hd, rows = b
                out.append("| " + " | ".join(hd) + " |")
                out.append("|" + "|".join("---" for _ in hd) + "|")
                out += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]
                out.append("")
            elif kind == "img":
                out += [f"![{b[1]}]({b[0]})", ""]
        return "\n".join(out) + "\n"

    def html(self) -> str:
        e = html.escape
        out = [
            "<!doctype html><html><head><meta charset='utf-8'>",
            f"<title>{e(self.title)}</title>",
            "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
            "table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.9em}"
            "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
            "td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}"
            "p{line-height:1.45}</style></head><body>",
            f"<h1>{e(self.title)}</h1>",
        ]
        for kind, b in self.blocks:
            if kind == "h":
                out.append(f"<h{b[0]}>{e(b[1])}</h{b[0]}>")
            elif kind == "p":
                out.append(f"<p>{e(b)}</p>")
            elif kind == "table":
                hd, rows = b
                out.append("<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in hd) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows]
                out.append("</table>")
            elif kind == "img":
                out.append(f"<p><img src='{e(b[0])}' alt='{e(b[1])}'></p>")
        out.append("</body></html>")
        return "\n".join(out) + "\n"
