"""
Keyset paging of the REST API's lists: the cursor and the ``Link`` header.

Every list answers at most ``limit`` rows (default :data:`DEFAULT_LIMIT`,
at most :data:`MAX_LIMIT`) in a fixed order of a unique key (a node's name,
an operation's id...).  When more rows follow, the answer carries
``Link: <...&after=CURSOR>; rel="next"``; the body stays the bare JSON list
it always was, so clients that read one page keep working.

Why keyset and not offset: a cursor names the last row seen, so rows
inserted or deleted between two requests never make a page skip or repeat
a row that existed throughout (an offset shifts with every insert or
delete before it), and a page costs an index range scan whatever its depth.

The cursor is opaque to clients: url-safe base64 of ``[kind, key]``.  The
kind keeps a cursor of one list from being replayed on another; anything
that does not decode to the list's own kind and key type is refused with
400 by the API (:class:`BadCursor`).  Pure functions, no I/O.
"""

import base64
import binascii
import json
from urllib.parse import urlencode

import attrs

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: Longest cursor accepted (a node name is at most 253 characters).
MAX_CURSOR = 1024


class BadCursor(ValueError):
    """A cursor that this list did not make."""


def encode(kind, key):
    """The opaque cursor of the row whose sort key is ``key`` in list ``kind``."""
    raw = json.dumps([kind, key], separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode(kind, cursor, key_type):
    """
    The sort key a cursor of list ``kind`` names; :class:`BadCursor` when it
    is not one (other list, wrong key type, not base64, not JSON).
    """
    if not isinstance(cursor, str) or not cursor or len(cursor) > MAX_CURSOR:
        raise BadCursor("after: not a cursor of this list")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise BadCursor("after: not a cursor of this list (use the one a Link "
                        "header gave)") from None
    if (not isinstance(value, list) or len(value) != 2 or value[0] != kind
            or isinstance(value[1], bool) or not isinstance(value[1], key_type)):
        raise BadCursor("after: not a cursor of this list (use the one a Link "
                        "header gave)")
    return value[1]


def limit_of(text):
    """``limit`` as given in a query (None: the default); ValueError naming it."""
    if text is None:
        return DEFAULT_LIMIT
    try:
        value = int(text)
    except ValueError:
        raise ValueError("limit: must be an integer") from None
    if not 1 <= value <= MAX_LIMIT:
        raise ValueError(f"limit: must be an integer from 1 to {MAX_LIMIT}")
    return value


def split(rows, limit, kind, key):
    """
    ``(page, next cursor or None)`` from ``rows`` read with ``limit + 1``:
    the extra row only says that another page follows.
    """
    if len(rows) <= limit:
        return rows, None
    page = rows[:limit]
    return page, encode(kind, key(page[-1]))


def link(path, args, cursor):
    """The ``Link`` header value pointing at the page after ``cursor``."""
    query = {k: v for k, v in args.items() if k not in ("after", "before")}
    query["after"] = cursor
    return f'<{path}?{urlencode(sorted(query.items()))}>; rel="next"'


@attrs.frozen
class EncodedPage:
    """
    A page already encoded as a JSON array (by PostgreSQL: the node list,
    :meth:`powerctl.region.store.NodeStore.page`), answered as it is.

    It cannot be filtered after the fact, so it states the ``clusters`` of
    its rows: the filter of a scoped token's listing
    (:func:`powerctl.region.auth.filter_listing`) checks that the query's
    own scope held, and refuses the answer otherwise.
    """

    text: str
    clusters: tuple = attrs.field(converter=tuple)

    def encoded(self):
        """The bytes to send: the text and a newline, as the API ends every JSON answer."""
        return self.text.encode("utf-8") + b"\n"
