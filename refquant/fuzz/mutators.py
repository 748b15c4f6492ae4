"""Seeded mutators: each takes a ``numpy.random.Generator`` and the bytes (or parsed JSON) of a real
input and returns ``(description, mutated)``. The description says exactly what was changed, so
that any failing case can be rebuilt by hand from the table's examples.
"""
import json
import re

HOSTILE_NUMBERS = ("nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e999", "-1e999", "1_0", "\u0661\u0660",
                   "\uff11", "0x10", "", " ", "-1", "0", "2147483648", "-2147483649", "99999999999999999999999",
                   "1e-320", "3x", "1,2", "abc", "100000000", "4000000", "1e308", "-0", "+5", "0.001", "1.5",
                   "5.", ".5", "1e3", "00012", "\u00a0", "1 0", "--1", "0b11")
"""Tokens that are, or look like, numbers: NaN and infinities, overflows, Python-only syntax
(``1_0``, Arabic-Indic and full-width digits, ``0x10``), C ``int`` overflow, huge sizes, and
ordinary values to keep some cases valid."""

HOSTILE_JSON = ("NaN", "Infinity", "-Infinity", "1e999", "true", "false", "null", '"8"', '""', "0.001", "-1", "0",
                "1e30", "100000000000000000000000000000", "[]", "{}", "[1, 2]", '{"step": 1}', "1.5", "8", "2147483648",
                "-2147483649", "[" * 40 + "]" * 40, '"../../etc/hostname"', '"/etc/hostname"', "1e-320")
"""JSON values that a schema must refuse or accept for what they are: NaN and infinities (which
Python's json reads), booleans and strings where numbers go, fractions where integers go, huge
integers, wrong containers, deep nesting, paths out of a directory."""

PATHS = ("", " ", ".", "..", "/", "/nonexistent/x.cfg", "../../etc/hostname", "a\0b", "~", "-", "x" * 300,
         "\u00e9t\u00e9.cfg", "/dev/null", "/proc/self/mem")
"""Path arguments: empty, folders, absolute and climbing paths, a NUL byte, over-long names."""


def choose(rng, items):
    return items[int(rng.integers(len(items)))]


# -- bytes -----------------------------------------------------------------------------------------

def flip_byte(rng, data):
    if not data:
        return "append a byte to an empty file", b"\x00"
    at = int(rng.integers(len(data)))
    value = int(rng.integers(256))
    return f"byte {at} set to {value:#04x}", data[:at] + bytes([value]) + data[at + 1:]


def truncate(rng, data):
    at = int(rng.integers(len(data) + 1))
    return f"truncated to {at} of {len(data)} bytes", data[:at]


def insert_bytes(rng, data):
    at = int(rng.integers(len(data) + 1))
    junk = bytes(rng.integers(0, 256, int(rng.integers(1, 9))).astype("uint8"))
    return f"{junk!r} inserted at byte {at}", data[:at] + junk + data[at:]


def delete_span(rng, data):
    if not data:
        return "empty file kept", data
    start = int(rng.integers(len(data)))
    stop = min(len(data), start + int(rng.integers(1, 64)))
    return f"bytes {start}..{stop} deleted", data[:start] + data[stop:]


def byte_order_mark(rng, data):
    return "UTF-8 byte-order mark prepended", b"\xef\xbb\xbf" + data


def not_utf8(rng, data):
    at = int(rng.integers(len(data) + 1))
    junk = choose(rng, (b"\xff", b"\xe9", b"\xc3\x28", b"\x80abc", b"\xed\xa0\x80"))
    return f"non-UTF-8 {junk!r} inserted at byte {at}", data[:at] + junk + data[at:]


def latin1(rng, data):
    text = data.decode("utf-8", errors="replace") + "\n# caf\u00e9\n"
    return "re-encoded as Latin-1 with a non-ASCII comment", text.encode("latin-1", errors="replace")


def empty(rng, data):
    return "emptied", b""


BYTE_MUTATORS = (flip_byte, truncate, insert_bytes, delete_span, byte_order_mark, not_utf8, empty)


# -- lines -----------------------------------------------------------------------------------------

def _lines(data):
    return data.decode("utf-8", errors="surrogateescape").split("\n")


def _joined(lines):
    return "\n".join(lines).encode("utf-8", errors="surrogateescape")


def duplicate_line(rng, data):
    lines = _lines(data)
    at = int(rng.integers(len(lines)))
    return f"line {at + 1} duplicated ({lines[at].strip()[:40]!r})", _joined(lines[:at + 1] + lines[at:])


def delete_line(rng, data):
    lines = _lines(data)
    at = int(rng.integers(len(lines)))
    return f"line {at + 1} deleted ({lines[at].strip()[:40]!r})", _joined(lines[:at] + lines[at + 1:])


def swap_lines(rng, data):
    lines = _lines(data)
    a, b = (int(v) for v in rng.integers(len(lines), size=2))
    lines[a], lines[b] = lines[b], lines[a]
    return f"lines {a + 1} and {b + 1} swapped", _joined(lines)


LINE_MUTATORS = (duplicate_line, delete_line, swap_lines)


# -- values inside text ----------------------------------------------------------------------------

CFG_VALUE = re.compile(r"^(\s*[A-Za-z_0-9]+\s*=\s*)(.*)$", re.MULTILINE)
XML_NUMBER = re.compile(r"(<(width|height|depth|xmin|ymin|xmax|ymax|difficult|truncated)>)([^<]*)(</\2>)")


def cfg_value(rng, data):
    """A ``key=value`` of a cfg: its value, or one item of a list, replaced by a hostile token.
    Returns ``(description, mutated, token)``: the token for the cfg's acceptance check."""
    text = data.decode("utf-8", errors="surrogateescape")
    found = list(CFG_VALUE.finditer(text))
    if not found:
        return "no key=value line; unchanged", data, None
    match = choose(rng, found)
    token = choose(rng, HOSTILE_NUMBERS)
    items = match.group(2).split(",")
    if len(items) > 1 and rng.random() < 0.5:
        items[int(rng.integers(len(items)))] = token
        value = ",".join(items)
    else:
        value = token
    line = text.count("\n", 0, match.start()) + 1
    key = match.group(1).strip().rstrip("=").strip()
    mutated = text[:match.start(2)] + value + text[match.end(2):]
    return f"line {line}: {key}={value!r}", mutated.encode("utf-8", errors="surrogateescape"), token


def xml_value(rng, data):
    """A size, box coordinate or flag of a VOC annotation replaced by a hostile token."""
    text = data.decode("utf-8", errors="surrogateescape")
    found = list(XML_NUMBER.finditer(text))
    if not found:
        return "no numeric element; unchanged", data
    match = choose(rng, found)
    token = choose(rng, HOSTILE_NUMBERS)
    mutated = text[:match.start(3)] + token + text[match.end(3):]
    return f"<{match.group(2)}> {match.group(3)!r} -> {token!r}", mutated.encode("utf-8", errors="surrogateescape")


# -- JSON ------------------------------------------------------------------------------------------

def json_paths(value, prefix=()):
    """Every path (tuple of keys and indices) into a parsed JSON value, the root included."""
    paths = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            paths += json_paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            paths += json_paths(item, prefix + (index,))
    return paths


def _at(value, path):
    for key in path:
        value = value[key]
    return value


PLACEHOLDER = "\u0000refquant-fuzz-value\u0000"


def json_value(rng, data):
    """A value somewhere in a JSON document replaced by a hostile JSON value (:data:`HOSTILE_JSON`),
    a key deleted, or an unknown key added; written back as text (NaN and 1e999 verbatim)."""
    try:
        document = json.loads(data.decode("utf-8"))
    except ValueError:
        return "not JSON; unchanged", data
    paths = json_paths(document)
    path = paths[int(rng.integers(len(paths)))]
    action = rng.random()
    if path and action < 0.15:
        parent = _at(document, path[:-1])
        del parent[path[-1]]
        return f"{_dotted(path)} deleted", json.dumps(document, indent=1).encode()
    if action < 0.25:
        target = _at(document, path)
        if isinstance(target, dict):
            target["unexpected_key"] = 1
            return f"{_dotted(path)}.unexpected_key added", json.dumps(document, indent=1).encode()
    token = choose(rng, HOSTILE_JSON)
    if not path:
        return f"document replaced by {token}", token.encode()
    _at(document, path[:-1])[path[-1]] = PLACEHOLDER
    text = json.dumps(document, indent=1).replace(json.dumps(PLACEHOLDER), token, 1)
    return f"{_dotted(path)} = {token[:40]}", text.encode()


def _dotted(path):
    return "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in path) or "(root)"


JSON_MUTATORS = (json_value, json_value, json_value, json_value, flip_byte, truncate, byte_order_mark, not_utf8)
