"""
One page of ``GET /v1/nodes`` as PostgreSQL writes it: a JSON array of
nodes as the API shows them (power documents redacted), built by one
prepared statement, so that the region only passes the text on.

Why: at 10,000 nodes the list's p95 was 17-35 ms on a loaded machine,
and most of a request's CPU went to Python turning 101 rows into dicts
(timestamps to text), deep-copying and redacting each power document and
encoding the result again as JSON (issue 14): 3.5-4.4 ms of the
region's one thread a page.  PostgreSQL now does that work next to the
rows (1.5-2.7 ms of a backend at load 5-10, most of it the redaction),
and the region spends 1.2-2.0 ms (bench/RESULTS.md).

What the SQL must do exactly as the Python does (tests/test_node_page.py
compares the two on hostile documents):

* :func:`powerctl.powerdoc.redact`: every set (not null, not ``""``)
  parameter of an agent whose driver the catalogue knows and names secret
  shows as ``"(set)"``; for a driver it does not know, every parameter
  whose name :func:`powerctl.powerdoc.looks_secret` (a case-insensitive
  search of a few words).  Documents outside the model are copied as they
  are wherever Python's ``redact`` copies them.  The case-insensitive
  search is done on the name with every character Python's
  ``re.IGNORECASE`` folds onto one of the pattern's letters mapped to it
  (:data:`_FOLD_ASCII`, :data:`_FOLD_OTHER`), then a case-sensitive
  search: no dependence on the database's locale or encoding.
* :func:`powerctl.region.store.base.plain`: timestamps as Python's
  ``isoformat`` writes them (microseconds only when not zero, ``+HH:MM``).
* ``drift``: :func:`powerctl.region.drift.as_json`.

The fields and their order are :data:`powerctl.region.api.NODE_FIELDS`'s
(bounds are not part of a list).  Key order inside a power document is
jsonb's, as the Python path returned it.  The text is the same JSON
value, not the same bytes: PostgreSQL spaces it differently and writes
non-ASCII characters as they are where ``json.dumps`` escaped them.
"""

import hashlib
import json

from powerctl.powerdoc import SECRET_MARK, _SECRETISH, redact
from powerctl.region import drift
from powerctl.region.store.base import Prepared

#: The fields of a listed node, in order: ``powerctl.region.api.NODE_FIELDS``
#: (tests/test_node_page.py holds them equal; api imports no store module).
FIELDS = ("name", "cluster", "power", "desired_state", "power_state", "responsive",
          "last_error", "last_queried_at", "last_changed_at", "created_at", "updated_at",
          "drift", "circuit")

#: Every character Python's ``re.IGNORECASE`` matches to a lower-case
#: letter of :data:`powerctl.powerdoc._SECRETISH`'s pattern, with that
#: letter: ASCII capitals (one ``translate``) and four more, each replaced
#: as a whole string (right under any server encoding).
_FOLD_ASCII = ("ACDEIKMNOPRSTUWY", "acdeikmnoprstuwy")
_FOLD_OTHER = (("\u0130", "i"), ("\u0131", "i"), ("\u017f", "s"), ("\u212a", "k"))


def _folded(sql):
    """SQL folding the text ``sql`` onto the pattern's lower-case letters."""
    out = f"translate({sql}, '{_FOLD_ASCII[0]}', '{_FOLD_ASCII[1]}')"
    for char, letter in _FOLD_OTHER:
        out = f"replace({out}, '{char}', '{letter}')"
    return out


def _secretish_sql():
    """The pattern as a case-sensitive PostgreSQL regex literal (letters and ``|`` only)."""
    pattern = _SECRETISH.pattern
    if not all(c.islower() or c == "|" for c in pattern):
        raise ValueError(f"redaction in SQL cannot mirror the pattern {pattern!r}")
    return pattern


def _literal(text):
    """A SQL string literal (names come from driver schemas; quoted all the same)."""
    return "'" + str(text).replace("'", "''") + "'"


def _params_known(params, names):
    """
    SQL: ``params`` (a jsonb object) of a driver whose secret parameters
    are ``names``, each set one shown as ``"(set)"``: no subquery, one
    merge per name (a driver has one or two).
    """
    out = params
    for name in sorted(names):
        value = f"{params}->{_literal(name)}"
        out += (f" || CASE WHEN {value} IS NULL OR {value} IN ('null'::jsonb, '\"\"'::jsonb)"
                f" THEN '{{}}'::jsonb ELSE jsonb_build_object({_literal(name)},"
                f" {_literal(SECRET_MARK)}::text) END")
    return out


def _params_unknown(params):
    """SQL: ``params`` of a driver the catalogue does not know: names that look secret hidden."""
    return (f"COALESCE((SELECT jsonb_object_agg(e.k, CASE WHEN e.v <> 'null'::jsonb"
            f" AND e.v <> '\"\"'::jsonb AND {_folded('e.k')} ~ '{_secretish_sql()}'"
            f" THEN to_jsonb({_literal(SECRET_MARK)}::text) ELSE e.v END)"
            f" FROM jsonb_each({params}) AS e(k, v)), '{{}}')")


def _agent(agent, secrets):
    """
    SQL: the agent ``agent`` (jsonb) with its secret parameters hidden;
    ``secrets``: the catalogue's ``{driver: secret names}``, written into
    the statement (one branch per driver).
    """
    params = f"({agent}->'params')"
    branches = " ".join(f"WHEN {_literal(driver)} THEN {_params_known(params, secrets[driver])}"
                        for driver in sorted(secrets))
    driver = f"CASE WHEN jsonb_typeof({agent}->'driver') = 'string' THEN {agent}->>'driver' END"
    shown = (f"CASE {driver} {branches} ELSE {_params_unknown(params)} END" if branches
             else _params_unknown(params))
    return (f"CASE WHEN jsonb_typeof({agent}) = 'object'"
            f" AND jsonb_typeof({agent}->'params') = 'object'"
            f" THEN {agent} || jsonb_build_object('params', {shown}) ELSE {agent} END")


def _agents(holder, alias, secrets):
    """SQL: ``holder`` (jsonb, its ``agents`` an array) with each agent redacted."""
    return (f"{holder} || jsonb_build_object('agents', COALESCE((SELECT jsonb_agg("
            f"{_agent(alias + '.a', secrets)} ORDER BY {alias}.i) FROM jsonb_array_elements("
            f"{holder}->'agents') WITH ORDINALITY AS {alias}(a, i)), '[]'))")


def redacted(power, secrets):
    """
    SQL: the power document ``power`` (a jsonb expression) as
    :func:`powerctl.powerdoc.redact` shows it with ``secrets`` (the
    catalogue's ``{driver: secret names}``).
    """
    level = (f"CASE WHEN jsonb_typeof(l.l) = 'object' AND jsonb_typeof(l.l->'agents') = 'array'"
             f" THEN {_agents('l.l', 'la', secrets)} ELSE l.l END")
    levels = (f"{power} || jsonb_build_object('levels', COALESCE((SELECT jsonb_agg({level}"
              f" ORDER BY l.i) FROM jsonb_array_elements({power}->'levels')"
              f" WITH ORDINALITY AS l(l, i)), '[]'))")
    return (f"CASE WHEN jsonb_typeof({power}) <> 'object' THEN {power}"
            f" WHEN {power} ? 'levels' THEN CASE WHEN jsonb_typeof({power}->'levels') = 'array'"
            f" THEN {levels} ELSE {power} END"
            f" WHEN jsonb_typeof({power}->'agents') = 'array'"
            f" THEN {_agents(power, 'pa', secrets)} ELSE {power} END")


def iso(ts):
    """SQL: the timestamptz ``ts`` as text, as Python's ``isoformat`` writes it (or NULL)."""
    return (f"to_char({ts}, 'YYYY-MM-DD\"T\"HH24:MI:SS') || CASE WHEN"
            f" {ts} = date_trunc('second', {ts}) THEN '' ELSE to_char({ts}, '.US') END"
            f" || to_char({ts}, 'TZH:TZM')")


def node_json(n, secrets):
    """SQL: the node row ``n`` as the API lists it (:data:`FIELDS`, no bounds)."""
    columns = {
        "power": redacted(f"{n}.power", secrets),
        "drift": (f"CASE WHEN {n}.drift_since IS NULL THEN NULL ELSE json_build_object("
                  f"'since', {iso(f'{n}.drift_since')}, 'observed', {n}.drift_observed,"
                  f" 'desired', {n}.desired_state, 'polls', {n}.drift_polls) END"),
    }
    for field in ("last_queried_at", "last_changed_at", "created_at", "updated_at"):
        columns[field] = iso(f"{n}.{field}")
    return "json_build_object(" + ", ".join(
        f"'{field}', {columns.get(field, f'{n}.{field}')}" for field in FIELDS) + ")"


def reference_node(row, secrets):
    """
    A node row (as ``NodeStore.list`` answers it) as :func:`node_json`
    shows it, in Python: the Python path this module replaced, kept as
    the reference the SQL is tested against and for in-memory stores.
    """
    shown = {field: row.get(field) for field in FIELDS}
    shown["power"] = redact(row["power"], secrets)
    shown["drift"] = drift.as_json(row.get("drift_since"), row.get("drift_observed"),
                                   row.get("desired_state"), row.get("drift_polls"))
    return shown


def reference(rows, secrets, limit):
    """
    What :meth:`NodeStore.page <powerctl.region.store.NodeStore.page>`
    answers, from the ``rows`` of the page read with ``limit + 1``:
    ``(json text, more, last name, clusters)``.
    """
    shown = [reference_node(r, secrets) for r in rows[:limit]]
    return (json.dumps(shown), len(rows) > limit, shown[-1]["name"] if shown else None,
            sorted({n["cluster"] for n in shown}))


#: The filters a page may have: (parameter, SQL condition).  Each
#: combination is its own prepared statement, so each plan is made for
#: exactly the conditions it has (an ``x IS NULL OR ...`` form would leave
#: a generic plan scanning every node for ``?power_state=error``).
FILTERS = (
    ("cluster", "cluster = %(cluster)s::text"),
    ("clusters", "cluster = ANY(%(clusters)s::text[])"),
    ("power_state", "power_state = %(power_state)s::text"),
    ("desired_state", "desired_state = %(desired_state)s::text"),
    ("responsive", "responsive = %(responsive)s::boolean"),
)


def statement(present, secrets):
    """
    The :class:`Prepared` statement of a page with the filters named in
    ``present``, redacting by ``secrets`` (``{driver: secret names}``).
    It answers one row: the page as JSON text, whether another page
    follows, the page's last name, and its clusters.  Its name tells the
    filters and the secrets apart (a session may serve two catalogues).
    """
    where = " AND ".join(["name > %(after)s::text"]
                         + [sql for name, sql in FILTERS if name in present])
    sql = (
        f"WITH page AS (SELECT * FROM nodes WHERE {where}"
        " ORDER BY name LIMIT %(limit)s::int + 1),"
        " shown AS (SELECT * FROM page ORDER BY name LIMIT %(limit)s::int)"
        f" SELECT COALESCE(json_agg({node_json('s', secrets)} ORDER BY s.name), '[]')::text,"
        " (SELECT count(*) FROM page) > %(limit)s::int, max(s.name),"
        " COALESCE(array_agg(DISTINCT s.cluster), '{}')"
        " FROM shown s")
    tag = "".join("1" if name in present else "0" for name, _ in FILTERS)
    digest = hashlib.sha1(repr(_secrets_key(secrets)).encode()).hexdigest()[:12]
    # JIT off: the planner costs each nested jsonb_array_elements/jsonb_each
    # at 100 rows, so the page looks like 1.8 million cost units and
    # PostgreSQL spent 60-70 ms compiling a query that runs in 1-3 ms.
    # Generic plan: each filter combination has its own statement, so one
    # plan fits all its calls; left to choose, PostgreSQL kept re-planning
    # (0.4 ms a call) because the generic plan's estimate (LIMIT unknown)
    # looked dearer.  SET LOCAL holds for the planning too (plans are made
    # at EXECUTE) and ends with the statement's implicit transaction.
    return Prepared(f"node_page_{tag}_{digest}", sql, local=(
        "SET LOCAL jit = off; SET LOCAL plan_cache_mode = force_generic_plan"))


def _secrets_key(secrets):
    return tuple(sorted((driver, tuple(sorted(names))) for driver, names in secrets.items()))


def present_filters(filters):
    """The names of the filters given (a dict; None values are absent), as a frozenset."""
    return frozenset(name for name, _ in FILTERS if filters.get(name) is not None)


class Statements:
    """
    The page statements of one store, made on first use: one per filter
    combination and catalogue (at most 32 per catalogue; a region has one).
    """

    def __init__(self):
        self._made = {}

    def get(self, filters, secrets):
        key = (present_filters(filters), _secrets_key(secrets))
        found = self._made.get(key)
        if found is None:
            found = self._made[key] = statement(key[0], secrets)
        return found
