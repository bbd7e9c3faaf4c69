"""
How the CLI shows things: aligned tables and key/value blocks for people,
JSON for scripts, a progress bar on a terminal, and the masking of secret
values in text (the redaction of documents is :mod:`powerctl.powerdoc`'s).

Pure functions over plain data (plus one small progress object), so the
formats are tested without a reactor.
"""

import json

from powerctl.powerdoc import SECRET_MARK

#: What a secret value is shown as (the same marker the schema uses).
REDACTED = SECRET_MARK


def to_json(value):
    """Stable, readable JSON for ``--json`` output."""
    return json.dumps(value, indent=2, sort_keys=False, default=str)


def cell(value):
    """One table cell: ``-`` for nothing, compact JSON for structures."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value).replace("\n", " ")


def when(value):
    """An ISO-8601 timestamp shortened to the second, for tables."""
    if not value:
        return None
    text = str(value).replace("T", " ")
    head, dot, rest = text.partition(".")
    if dot:
        # keep the zone suffix (+00:00 / Z) but drop the fraction
        zone = next((i for i, c in enumerate(rest) if c in "+-Z"), None)
        text = head + (rest[zone:] if zone is not None else "")
    return text


def shown(key, value):
    """A value for a ``key: value`` view: timestamps (``*_at``) shortened."""
    return when(value) if key.endswith("_at") else value


def table(rows, columns):
    """
    Render ``rows`` (dicts) as an aligned table.  ``columns`` is a list of
    ``(header, getter)`` where ``getter`` is a key or a ``row -> value``
    callable.  The last column is not padded (no trailing blanks).
    """
    headers = [h for h, _ in columns]
    body = []
    for row in rows:
        body.append([
            cell(get(row) if callable(get) else row.get(get)) for _, get in columns
        ])
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(headers)]
    lines = []
    for values in [headers] + body:
        padded = [v.ljust(w) for v, w in zip(values[:-1], widths[:-1])] + [values[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def key_values(pairs):
    """Render ``[(key, value), ...]`` as an aligned ``key: value`` block."""
    pairs = list(pairs)
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{(k + ':').ljust(width + 1)} {cell(v)}" for k, v in pairs)


def scrub(text, secret_values):
    """
    ``text`` with every occurrence of a secret *value* masked: the last
    line of defence for error messages built from device answers.
    """
    for value in secret_values:
        if isinstance(value, str) and len(value) >= 3:
            text = text.replace(value, "***")
    return text


class Progress:
    """
    A one-line progress bar redrawn in place on a terminal.  Disabled (no
    output at all) when ``enabled`` is false, e.g. stderr is a file or
    there is a single item, so logs and pipes never see control codes.
    """

    def __init__(self, stream, total, enabled, width=30, label="done"):
        self.stream = stream
        self.total = total
        self.enabled = enabled and total > 0
        self.width = width
        self.label = label
        self.done = 0
        self.failed = 0
        self._drawn = False

    def advance(self, ok=True):
        self.done += 1
        if not ok:
            self.failed += 1
        self.draw()

    def render(self):
        filled = int(self.width * self.done / self.total) if self.total else self.width
        bar = "#" * filled + "." * (self.width - filled)
        failed = f", {self.failed} failed" if self.failed else ""
        return f"[{bar}] {self.done}/{self.total} {self.label}{failed}"

    def draw(self):
        if not self.enabled:
            return
        self.stream.write("\r" + self.render())
        self.stream.flush()
        self._drawn = True

    def finish(self):
        """End the bar's line so later output starts on a fresh one."""
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
