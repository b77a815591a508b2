"""Declarative mappings between a system's columns and the canonical model.

A mapping file says, field by field, how to compute each target column. It is
compiled into polars expressions and applied as one `select`, so mapping a
million rows costs a fraction of a second and no Python runs per row. A
mapping is pure: it does no I/O and never looks at more than the frame it is
given. Types are not the mapping's job: after a source mapping,
`kanal.core.validate.conform` casts the columns to the canonical types and
rejects what does not fit.

Usage::

    from kanal.mappings import Mapping, load_mapping, parse_mapping

    m = load_mapping("mappings/erp_customers.yaml")   # ConfigError names file and field
    m = parse_mapping({"entity": "customers", "fields": {...}}, source="inline")
    canonical = m.apply(raw_frame)                     # pl.DataFrame -> pl.DataFrame
    Mapping.identity().apply(frame) is frame           # no mapping: unchanged

The file format
===============

::

    entity: customers        # the canonical entity (optional; see direction)
    direction: source        # source (default) or sink
    keep_unmapped: true      # default: true for source, false for sink
    fields:
      customer_no: kunnr                                   # shorthand for {from: kunnr}
      company: {from: name1}
      type: {from: kind, lookup: {B: b2b, C: b2c}, default: b2c}
      currency: {const: EUR}
      email: {from: mail, transform: lower}
      first_name: {split: {from: full_name, sep: " ", index: 0}}
      last_name: {split: {from: full_name, sep: " ", index: -1}}
      phone: {concat: [area, number], sep: " "}
      vat_id: {from: ustid, required: true}
      note: {from: x, default: "n/a"}
      weight: {from: gross_weight, cast: decimal}
      price_group: {expr: "upper(trim(pgroup)) if pgroup else 'STANDARD'"}
      addresses.billing.street: {from: bill_street}
      addresses.billing.country: {from: bill_country, transform: upper}
      updated_at: changed_at

Top-level keys (any other key is an error):

``entity``
    A canonical entity (`kanal.core.model.ENTITIES`). For a source mapping
    every target must be one of its fields; without an entity targets are
    free. A sink mapping may name the entity it consumes; its targets are
    always free.
``direction``
    ``source``: raw system columns in, canonical fields out.
    ``sink``: canonical columns in, the target system's columns out.
``keep_unmapped``
    Also pass through the input columns that no field reads or writes (a
    field writing a name replaces the input column of that name). Columns
    whose names start with ``_kanal_`` (the key, the reject reason) always pass
    through. Output order: the fields in file order, then the passed-through
    columns in input order, then ``_kanal_reason``.
``fields``
    ``target: column`` or ``target: {operation, modifiers...}``.

Each field has exactly one operation:

``from: col``
    The input column ``col``. A dotted name that is not itself a column is a
    path into struct columns (``addresses.billing.city``), in both directions.
``const: value``
    The same value on every row.
``split: {from: col, sep: " ", index: 0}``
    The text of ``col`` split on ``sep`` (default one space); ``index`` picks
    the part, counting from 0, negative from the end; a missing part is null.
``concat: [col, ...]`` with ``sep: " "`` (default one space)
    The texts joined with ``sep``; null and blank parts are skipped, and the
    result is null when no part is left.
``expr: "..."``
    An expression, see below.

and any of these modifiers, applied in this order:

``transform: lower`` or ``[strip, upper]``
    Text transforms, in list order: ``lower``, ``upper``, ``strip``, ``title``.
    Non-text values are turned into text first.
``lookup: {B: b2b, C: b2c}``
    Replaces values found in the table (compared as text, so ``1:`` matches
    the integer 1 and the text "1"). Unmatched values, null included, become
    ``default``, or null without one. The values and the default share one
    type.
``default: value``
    Replaces null (not empty text).
``cast: type``
    ``str``, ``int``, ``float``, ``decimal`` (canonical decimal text such as
    "12.50", never through a float), ``bool`` (true/t/1/yes/y and
    false/f/0/no/n, any case) or ``datetime`` (UTC; ISO 8601 text with or
    without an offset, naive values read as UTC, integers as microseconds
    since the epoch). Blank text becomes null; any other value that does not
    convert rejects its row, and ``_kanal_reason`` says "mapping <file>:
    weight: 'abc' is not a valid decimal (from gross_weight)". An int cast
    refuses 2.5 rather than truncating it.
``required: true``
    Rows where the result is null or blank text are rejected with
    "mapping <file>: vat_id is required (from ustid)".

Rejections do not drop rows: ``apply`` adds ``_kanal_reason`` (text, null when
the row is fine, all failures of a row joined by "; ") whenever the mapping has
a ``required`` field or a ``cast``. A reason already on the input is kept.

Dotted targets build struct columns. In a source mapping for an entity, the
only nested field is ``addresses``: ``addresses.<billing|shipping>.<street|zip|
city|country>``; all such targets form one ``addresses`` column with exactly
the canonical dtype (`kanal.core.model.ADDRESSES_DTYPE`), parts not mapped
being null. Elsewhere (sink mappings, mappings without entity) dotted targets
build structs holding just the mapped parts. A target cannot be both a whole
column and a path inside it.

Expressions
===========

``expr`` takes a Python-like expression. It is parsed with `ast` and checked
against a whitelist when the file is loaded; it is compiled to a polars
expression and never evaluated by Python.

* Columns: bare names (``pgroup``), ``col("name with spaces")``, struct paths
  ``addresses.billing.city``.
* Literals: ``'text'``, ``42``, ``1.5``, ``True``, ``False``, ``None``.
* Arithmetic ``+ - * /`` on numbers (``/`` always gives a float); ``+`` also
  joins two texts. A null operand gives null.
* Comparisons ``== != < <= > >=`` (chains such as ``0 < x <= 9`` allowed) and
  ``x is None`` / ``x is not None``. Text is never compared with a number.
* Truthiness, used by ``and``, ``or``, ``not`` and ``a if cond else b``: null,
  false, 0 and blank text are false, everything else true. ``and``, ``or`` and
  ``not`` give true or false, never an operand; use ``coalesce`` for
  fallbacks.
* Functions: ``lower(x)``, ``upper(x)``, ``trim(x)``, ``coalesce(a, b, ...)``
  (first non-null), ``concat(a, b, ..., sep=" ")`` (as the ``concat``
  operation), ``substr(x, start, length)`` (start from 0, negative from the
  end, length optional), ``replace(x, old, new)`` (every occurrence, literal
  text), ``round(x, n)`` (halves to even, like Python), ``abs(x)``, ``len(x)``
  (characters), ``str(x)``, ``int(x)``, ``float(x)`` (null when the value
  does not convert; text is stripped first).

Anything else (attribute calls, subscripts, ``%``, ``in``, lambdas, ...) is a
ConfigError naming the file, the field and the offending token.

Errors
======

Every problem in a file is reported at once in one
`kanal.core.errors.ConfigError` whose lines start with the file name and name
the field (``erp_customers.yaml: fields.vat_id.cast: unknown cast 'money'``).
When applied, a mapping raises ConfigError if the input lacks columns it reads
(all of them listed, with the available columns) or if an operation does not
fit a column's type (``round`` of text).
"""

from kanal.mappings.mapping import Mapping, load_mapping, parse_mapping

__all__ = ["Mapping", "load_mapping", "parse_mapping"]
