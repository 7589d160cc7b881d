"""The run catalog's query language and a record's facts: what `flag=good bias.volts=60` means.

Owns the filters (`KEY OP VALUE`, OP one of = != < <= > >= ~) parsed from words or
from a dict of equalities, the flat facts of a record that filters are checked
against (one key per queryable number or text: the record's own fields,
`params.<key>`, `<program>.<setting>`, `<value>.<stat>`, `<reader>.<counter>`),
and checking filters against facts in Python with the meaning the catalog's
SQLite queries give them. Pure: must not read files, the clock or a socket.
"""

import datetime
import functools
import json
import math
import re
import shlex
import unicodedata
from collections import namedtuple

OPS = ("<=", ">=", "!=", "=", "<", ">", "~")
ORDERING = ("<", "<=", ">", ">=")
OP_CHARS = "=!<>~"
STATS = ("begin", "end", "min", "mean", "max", "count")
NUMBER_KEYS = ("run", "start", "end", "duration", "step", "files", "alarms")
TEXT_KEYS = ("result", "why", "comment", "flag", "flag.by", "began_by", "ended_by", "sequence", "alarm")
FIXED_KEYS = NUMBER_KEYS + TEXT_KEYS
TIME_KEYS = ("start", "end")
FULL_TEXT_KEYS = ("comment", "why")        # `~` is a full-text search on these, a substring search elsewhere
MANY_KEYS = ("alarm",)                     # a list of values: a filter holds when one of them matches
FAMILIES = ("run", "params", "settings", "values", "readers")   # where a key comes from; "run": the fixed keys

MAX_FILTERS = 50
MAX_WORD = 1000            # characters of one filter word
MAX_KEY = 200              # characters of a key; longer keys of a record are not facts
MAX_TEXT = 1000            # characters of a text fact kept; a longer text compares by its beginning
MAX_DEPTH = 8              # levels of nested settings or params that become keys

NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
KEY_RE = re.compile(r"[^\s=!<>~]+")
WORD_RE = re.compile(r"[^\W_]+")           # a word of a full-text search, as SQLite's unicode61 tokenizer cuts them
ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

Filter = namedtuple("Filter", "key op value text")
Filter.__doc__ = """One condition: `value` a number or a string (a time as epoch seconds), `text` the value as given."""


class QueryError(ValueError):
    """A filter word (or a flag, or a key) that the catalog cannot answer: the message names it and says why."""


def parse(query):
    """The filters of `query`: a list of words (`flag=good`, `temperature.max<140`), a string of such words
    (split as a shell would, so `'comment~dark current'` is one word), or a dict of equalities
    ({"flag": "good", "bias.volts": 60}). Raises QueryError naming the first bad word."""
    if isinstance(query, dict):
        items = list(query.items())
        if len(items) > MAX_FILTERS:
            raise QueryError(f"{len(items)} filters: at most {MAX_FILTERS}")
        return [equality(key, value) for key, value in items]
    if isinstance(query, str):
        try:
            query = shlex.split(query)
        except ValueError as exc:
            raise QueryError(f"{query[:80]!r}: {exc}") from None
    if not isinstance(query, (list, tuple)):
        raise QueryError(f"a query is a list of words such as 'flag=good' or an object of equalities, "
                         f"not {type(query).__name__}")
    if len(query) > MAX_FILTERS:
        raise QueryError(f"{len(query)} filters: at most {MAX_FILTERS}")
    return [parse_word(word) for word in query]


def parse_word(word):
    """One filter from a word `KEY OP VALUE`."""
    if not isinstance(word, str):
        raise QueryError(f"{word!r:.80}: a filter is a word such as 'flag=good', not {type(word).__name__}")
    if len(word) > MAX_WORD:
        raise QueryError(f"{word[:40]!r}...: {len(word)} characters, at most {MAX_WORD}")
    at = next((i for i, char in enumerate(word) if char in OP_CHARS), None)
    if at is None:
        raise QueryError(f"{word!r}: no operator; write KEY OP VALUE with OP one of {' '.join(OPS)}, "
                         "e.g. flag=good or temperature.max<140")
    op = word[at:at + 2] if word[at:at + 2] in ("<=", ">=", "!=") else word[at]
    if op == "!":
        raise QueryError(f"{word!r}: '!' alone is no operator; != is 'not equal'")
    return make_filter(word, word[:at], op, word[at + len(op):])


def equality(key, value):
    """The filter `key = value` of a dict of equalities."""
    if not isinstance(key, str):
        raise QueryError(f"{key!r:.80}: a key is a string, not {type(key).__name__}")
    if isinstance(value, bool):
        value = "true" if value else "false"
    word = f"{key}={value}"
    if len(word) > MAX_WORD:
        raise QueryError(f"{word[:40]!r}...: {len(word)} characters, at most {MAX_WORD}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise QueryError(f"{word!r}: not a finite number")
        return make_filter(word, key, "=", str(value), value)
    if not isinstance(value, str):
        raise QueryError(f"{key[:80]!r}: an equality's value is a number or a string, not {type(value).__name__}")
    return make_filter(word, key, "=", value)


def make_filter(word, key, op, text, number=None):
    if not key:
        raise QueryError(f"{word!r}: no key before {op!r}")
    if len(key) > MAX_KEY or not KEY_RE.fullmatch(key):
        raise QueryError(f"{word[:80]!r}: {key[:80]!r} is not a key (no spaces or = ! < > ~, "
                         f"at most {MAX_KEY} characters)")
    if key not in FIXED_KEYS and "." not in key:
        raise QueryError(unknown_key(key))
    if text == "":
        raise QueryError(f"{word!r}: no value after {op!r}")
    if op == "~":
        return text_search(word, key, text)
    value = number if number is not None else as_number(text)
    if key in TIME_KEYS and value is None:
        value = as_time(word, text)
    if value is None and (op in ORDERING or key in NUMBER_KEYS):
        what = "a time" if key in TIME_KEYS else "a number"
        raise QueryError(f"{word!r}: {key} {op} needs {what}, and {text!r} is none")
    return Filter(key, op, text if value is None else value, text)


def text_search(word, key, text):
    if key in NUMBER_KEYS:
        raise QueryError(f"{word!r}: ~ searches text, and {key} is a number; use = < <= > >=")
    if key in FULL_TEXT_KEYS and not WORD_RE.search(text):
        raise QueryError(f"{word!r}: no word to search {key} for (letters or digits)")
    return Filter(key, "~", text, text)


def as_number(text):
    if not NUMBER_RE.fullmatch(text):
        return None
    try:
        return int(text)
    except ValueError:
        number = float(text)
        return number if math.isfinite(number) else None


def as_time(word, text):
    """Epoch seconds of an ISO date or date and time, in UTC unless it names its offset."""
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise QueryError(f"{word!r}: {text!r} is not a time: give epoch seconds or an ISO date or date and time "
                         "such as 2026-12-05 or 2026-12-05T10:00 (UTC)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def unknown_key(key, seen=None, why=""):
    """The message for a key no run has: the key families, with the names seen (`seen`: family -> keys)."""
    seen = seen or {}

    def names(family, label, part):
        found = sorted({part(k) for k in seen.get(family, ())})
        return f" ({label}: {', '.join(found[:12])}{', ...' if len(found) > 12 else ''})" if found else ""
    return (f"unknown key {key!r}{why}: keys are {', '.join(FIXED_KEYS)}, "
            f"params.<key>{names('params', 'seen', lambda k: k[len('params.'):])}, "
            f"<program>.<setting>{names('settings', 'programs', lambda k: k.partition('.')[0])}, "
            f"<value>.<stat> with stat one of {' '.join(STATS)}{names('values', 'values', before_last_dot)}, "
            f"<reader>.<counter>{names('readers', 'readers', before_last_dot)}")


def before_last_dot(key):
    return key.rpartition(".")[0]


# --- facts -----------------------------------------------------------------------------------------------

def facts(record):
    """The flat facts of `record` (as JSON decodes it): key -> number or string (`alarm`: the list of the alarms'
    names).

    A null or missing part gives no key; booleans are the strings "true" and "false"; a list of settings is its
    JSON text. The record's own keys (FIXED_KEYS) are never taken from its parts; between parts, on a clash,
    readers win over values, values over settings, settings over params.
    """
    return collect(record, None)


def entries(record):
    """(facts, families): `facts(record)`, and key -> where it comes from (one of FAMILIES)."""
    families = {}
    return collect(record, families), families


def collect(record, families):
    found = {}
    for family, part, prefix in (("params", record.get("params"), "params."), ("settings", record.get("settings"), "")):
        if type(part) is dict:
            flat(part, prefix, 0, found, families, family)
    for family, part, names in (("values", record.get("values"), STATS), ("readers", record.get("readers"), None)):
        if type(part) is not dict:
            continue
        for name, inner in part.items():
            if type(inner) is not dict:
                continue
            for item in names or inner:
                value = scalar(inner.get(item))
                key = f"{name}.{item}"
                if type(value) in (int, float) and good_key(key):
                    found[key] = value
                    if families is not None:
                        families[key] = family
    for key in FIXED_KEYS:
        found.pop(key, None)   # the record's own keys are never a program's, even where the record has no value
    for key, value in own_facts(record).items():
        if value is not None:
            found[key] = value
            if families is not None:
                families[key] = "run"
    return found


def own_facts(record):
    flag = record.get("flag") if isinstance(record.get("flag"), dict) else {}
    began = record.get("began_by") if isinstance(record.get("began_by"), dict) else {}
    ended = record.get("ended_by") if isinstance(record.get("ended_by"), dict) else {}
    sequence = began.get("sequence") or ended.get("sequence")
    sequence = sequence if isinstance(sequence, dict) else {"sequence": sequence}
    alarms = record.get("alarms") if isinstance(record.get("alarms"), list) else None
    files = record.get("files")
    names = sorted({a["name"] for a in alarms or () if isinstance(a, dict) and isinstance(a.get("name"), str)})
    own = {"run": num_of(record.get("run")), "start": num_of(record.get("start")), "end": num_of(record.get("end")),
           "duration": num_of(record.get("duration")), "result": text_of(record.get("result")),
           "why": text_of(record.get("why")), "comment": text_of(record.get("comment")),
           "flag": text_of(flag.get("value")), "flag.by": text_of(flag.get("by")),
           "began_by": text_of(began.get("operator")) or text_of(began.get("client")),
           "ended_by": text_of(ended.get("operator")) or text_of(ended.get("alarm")) or text_of(ended.get("client")),
           "sequence": text_of(sequence.get("sequence")), "step": num_of(sequence.get("step")),
           "files": len(files) if isinstance(files, list) else None,
           "alarms": len(alarms) if alarms is not None else None,
           "alarm": [name[:MAX_TEXT] for name in names] or None}
    return own


def flat(part, prefix, depth, found, families, family):
    """Every scalar of nested `part` into `found`, keys joined by dots."""
    for name, value in part.items():
        key = prefix + name
        if not good_key(key):
            continue
        kind = type(value)
        if kind is dict:
            if depth < MAX_DEPTH:
                flat(value, key + ".", depth + 1, found, families, family)
            continue
        value = json.dumps(value, separators=(",", ":"))[:MAX_TEXT] if kind is list else scalar(value)
        if value is not None:
            found[key] = value
            if families is not None:
                families[key] = family


@functools.lru_cache(maxsize=65536)   # runs repeat their programs' keys: each is checked once
def good_key(key):
    return len(key) <= MAX_KEY and KEY_RE.fullmatch(key) is not None


def scalar(value):
    """A fact of a JSON value: a finite number, a non-empty text (cut at MAX_TEXT), "true" or "false"; else None."""
    kind = type(value)
    if kind is int:
        return value
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is str:
        return value[:MAX_TEXT] if value else None
    if kind is bool:
        return "true" if value else "false"
    return None


def num_of(value):
    return scalar(value) if type(value) in (int, float) else None


def text_of(value):
    return scalar(value) if type(value) is str else None


# --- checking filters against facts ----------------------------------------------------------------------

def matches(filters, found):
    """Whether every filter holds for the facts `found` (as `facts` gives them)."""
    return all(holds(f, found.get(f.key)) for f in filters)


def holds(condition, value):
    if condition.op == "!=":
        return not holds(condition._replace(op="="), value)
    if isinstance(value, list):
        return any(holds(condition, v) for v in value)
    if value is None:
        return False
    op, wanted = condition.op, condition.value
    if op == "~":
        if not isinstance(value, str):
            return False
        if condition.key in FULL_TEXT_KEYS:
            return full_text(wanted, value)
        return fold(wanted) in fold(value)
    if op == "=":
        return value == wanted if isinstance(value, (int, float)) else value == condition.text
    if isinstance(value, str) or isinstance(wanted, str):
        return False
    return {"<": value < wanted, "<=": value <= wanted, ">": value > wanted, ">=": value >= wanted}[op]


def full_text(wanted, value):
    """Every word of `wanted` begins a word of `value`, in any order, ignoring case and accents."""
    words = words_of(value)
    return all(any(w.startswith(part) for w in words) for part in words_of(wanted))


def words_of(value):
    plain = "".join(c for c in unicodedata.normalize("NFKD", value) if not unicodedata.combining(c))
    return WORD_RE.findall(plain.lower())


def fold(value):
    """Case of ASCII letters ignored, as SQLite's LIKE ignores it."""
    return value.translate(ASCII_LOWER)
