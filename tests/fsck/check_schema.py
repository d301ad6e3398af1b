#!/usr/bin/env python3
"""Validate a `rekeyctl fsck --json` report against schema rekeyfs-fsck/1.

usage: check_schema.py [REPORT.json]     (standard input without an argument)

Checks that every documented field is present with its type (no field
missing, no undocumented field), that enumerations hold documented values,
and the invariants between fields (sums, the exit status bits).  Exit status
0 when the report is valid, 1 with one line per violation otherwise.  The
schema is documented in rekeyctl(8), section "FSCK JSON REPORT".
"""
import json
import re
import sys

SCHEMA = "rekeyfs-fsck/1"
FP = re.compile(r"^[0-9a-f]{32}$")
KEY_FILE = {"ok", "missing", "released", "changed", "refused", "unchecked"}
REGISTRY = {"active", "decrypt-only", "released", "unregistered"}
PROBLEM = {"corrupt-header", "unsupported-version", "io-error", "corrupt-chunk", "malformed-slot",
           "missing-chunks", "damaged-header-copy"}
CIPHERS = {"AES/GCM/NoPadding", "ChaCha20/Poly1305/NoPadding"}

errors = []


def err(where, msg):
    errors.append("%s: %s" % (where, msg))


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def is_count(v):
    return is_int(v) and v >= 0


def check_fields(where, obj, spec):
    """spec: name -> predicate(value) -> bool, with a description"""
    if not isinstance(obj, dict):
        err(where, "not an object")
        return False
    for name, (pred, desc) in spec.items():
        if name not in obj:
            err(where, "missing field '%s'" % name)
        elif not pred(obj[name]):
            err(where, "field '%s' = %r is not %s" % (name, obj[name], desc))
    for name in obj:
        if name not in spec:
            err(where, "undocumented field '%s'" % name)
    return all(name in obj and pred(obj[name]) for name, (pred, _) in spec.items())


COUNT = (is_count, "a count (integer >= 0)")
BOOL = (lambda v: isinstance(v, bool), "a boolean")
STR = (lambda v: isinstance(v, str), "a string")
STR_OR_NULL = (lambda v: v is None or isinstance(v, str), "a string or null")
STRLIST = (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings")
COUNT_OR_NULL = (lambda v: v is None or is_count(v), "a count or null")


def check_table(where, t, total, mode):
    exact = mode in ("exact", "deep")
    deep = mode == "deep"
    spec = {
        "path": (lambda v: v is None, "null") if total else (lambda v: isinstance(v, str) and v.startswith("/"), "a table path"),
        "target": (lambda v: v is None, "null") if total else STR,
        "chunk_size": (lambda v: v is None, "null") if total else (lambda v: is_int(v) and 4096 <= v <= 1048576, "a chunk size"),
        "files": COUNT, "chunk_files": COUNT, "plain_files": COUNT, "corrupt_files": COUNT, "extra_links": COUNT,
        "chunks": COUNT, "chunks_on_target": COUNT, "chunks_off_target": COUNT,
        "percent_on_target": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 100,
                              "a percentage"),
        "bytes": COUNT, "files_off_target": COUNT, "off_target_files": STRLIST, "off_target_files_complete": BOOL,
        "chunks_unusable": COUNT, "files_unusable": COUNT, "recounted": COUNT,
        "malformed_chunks": COUNT if exact else (lambda v: v is None, "null (not counted in this mode)"),
        "count_mismatch": COUNT if exact else (lambda v: v is None, "null (not counted in this mode)"),
        "corrupt_chunks": COUNT if deep else (lambda v: v is None, "null (not counted in this mode)"),
        "chunks_verified": COUNT if deep else (lambda v: v is None, "null (not counted in this mode)"),
        "keys": (lambda v: isinstance(v, list), "a list"),
        "keys_missing": STRLIST, "keys_released": STRLIST, "keys_changed": STRLIST, "keys_refused": STRLIST,
        "v2_files": COUNT, "exposed": (lambda v: isinstance(v, list), "a list"),
    }
    if not check_fields(where, t, spec):
        return
    kspec = {
        "name": STR,
        "fingerprint": (lambda v: isinstance(v, str) and FP.match(v) is not None, "32 hex digits"),
        "key_file": (lambda v: v in KEY_FILE, "one of %s" % sorted(KEY_FILE)),
        "target": (lambda v: v is None, "null") if total else BOOL,
        "chunks": COUNT, "bytes": COUNT, "files": COUNT, "wrapped_files": COUNT,
    }
    ok_keys = True
    for i, k in enumerate(t["keys"]):
        ok_keys &= check_fields("%s.keys[%d]" % (where, i), k, kspec)
        if isinstance(k.get("wrapped_files"), int) and k["wrapped_files"] > t["v2_files"]:
            err("%s.keys[%d]" % (where, i), "wrapped_files > the table's v2_files")
    xspec = {
        "key": STR,
        "fingerprint": (lambda v: isinstance(v, str) and FP.match(v) is not None, "32 hex digits"),
        "chunks": COUNT, "files": COUNT, "file_names": STRLIST,
    }
    for i, x in enumerate(t["exposed"]):
        if check_fields("%s.exposed[%d]" % (where, i), x, xspec) and x["files"] > t["chunk_files"]:
            err("%s.exposed[%d]" % (where, i), "more exposed files than chunk files")
    # invariants
    if t["files"] != t["chunk_files"] + t["plain_files"] + t["corrupt_files"]:
        err(where, "files != chunk_files + plain_files + corrupt_files")
    if t["chunks_on_target"] + t["chunks_off_target"] != t["chunks"]:
        err(where, "chunks_on_target + chunks_off_target != chunks")
    if len(t["off_target_files"]) > t["files_off_target"]:
        err(where, "more off_target_files than files_off_target")
    if t["off_target_files_complete"] != (len(t["off_target_files"]) == t["files_off_target"]):
        err(where, "off_target_files_complete does not match the list")
    if (t["chunks_off_target"] > 0) != (t["files_off_target"] > 0):
        err(where, "chunks_off_target and files_off_target disagree")
    if t["files_off_target"] > t["chunk_files"]:
        err(where, "files_off_target > chunk_files")
    expect_pct = 100.0 if t["chunks"] == 0 else int(t["chunks_on_target"] * 1000 // t["chunks"]) / 10.0
    if t["chunks"] and t["chunks_on_target"] < t["chunks"] and expect_pct >= 100.0:
        expect_pct = 99.9
    if abs(t["percent_on_target"] - expect_pct) > 0.05:
        err(where, "percent_on_target %r, expected %r (rounded down)" % (t["percent_on_target"], expect_pct))
    if ok_keys:
        if sum(k["chunks"] for k in t["keys"]) != t["chunks"]:
            err(where, "the keys' chunks do not add up to chunks")
        bad = {"missing": "keys_missing", "released": "keys_released", "changed": "keys_changed",
               "refused": "keys_refused"}
        for st, field in bad.items():
            names = sorted(k["name"] for k in t["keys"] if k["key_file"] == st)
            if sorted(t[field]) != names:
                err(where, "%s %r does not list the keys with key_file '%s' %r" % (field, t[field], st, names))
        unusable = sum(k["chunks"] for k in t["keys"] if k["key_file"] in bad)
        if unusable != t["chunks_unusable"]:
            err(where, "chunks_unusable %d != chunks under keys that cannot be used %d" % (t["chunks_unusable"], unusable))
        if not total:
            on = sum(k["chunks"] for k in t["keys"] if k["target"])
            if on != t["chunks_on_target"]:
                err(where, "chunks_on_target %d != chunks of the key marked target %d" % (t["chunks_on_target"], on))


def check(doc):
    top = {
        # the fleet fields rekeyctl puts first (rekeyctl(8), JSON OUTPUT OF SEVERAL NODES)
        "host": STR,
        "data_dir": STR,
        "mount": STR_OR_NULL,
        "time": (lambda v: isinstance(v, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", v) is not None,
                 "RFC 3339 UTC time"),
        "schema": (lambda v: v == SCHEMA, repr(SCHEMA)),
        "datadir": STR,
        "keydir": STR_OR_NULL,
        "source": (lambda v: v in ("offline", "daemon"), "offline or daemon"),
        "mode": (lambda v: v in ("headers", "exact", "deep"), "headers, exact or deep"),
        "table_filter": STR_OR_NULL,
        "verbose": BOOL,
        "exit": (lambda v: v in (0, 1, 4, 5), "0, 1, 4 or 5"),
        "rotation_complete": BOOL,
        "corruption_found": BOOL,
        "deep_bytes": COUNT_OR_NULL,
        "tables": (lambda v: isinstance(v, list), "a list"),
        "total": (lambda v: isinstance(v, dict), "an object"),
        "keys": (lambda v: isinstance(v, list), "a list"),
        "problems": (lambda v: isinstance(v, list), "a list"),
        "key_query": (lambda v: v is None or isinstance(v, dict), "an object or null"),
    }
    if not check_fields("report", doc, top):
        return
    mode = doc["mode"]
    if (doc["deep_bytes"] is None) == (mode == "deep"):
        err("report", "deep_bytes must be a count exactly in mode deep")
    for i, t in enumerate(doc["tables"]):
        check_table("tables[%d]" % i, t, False, mode)
    check_table("total", doc["total"], True, mode)
    if doc["table_filter"] is not None and [t.get("path") for t in doc["tables"]] != [doc["table_filter"]]:
        err("report", "with table_filter, tables holds exactly that table")
    # the total is the sum of the tables shown
    tot = doc["total"]
    for f in ("files", "chunk_files", "plain_files", "corrupt_files", "chunks", "chunks_on_target", "bytes",
              "files_off_target", "chunks_unusable"):
        if isinstance(tot.get(f), int) and all(isinstance(t.get(f), int) for t in doc["tables"]):
            s = sum(t[f] for t in doc["tables"])
            if s != tot[f]:
                err("total", "%s %d != sum over tables %d" % (f, tot[f], s))
    kspec = {
        "name": STR,
        "fingerprint": (lambda v: isinstance(v, str) and FP.match(v) is not None, "32 hex digits"),
        "cipher": (lambda v: v in CIPHERS, "a cipher name"),
        "bits": (lambda v: v in (128, 256), "128 or 256"),
        "registry": (lambda v: v in REGISTRY, "one of %s" % sorted(REGISTRY)),
        "key_file": (lambda v: v in KEY_FILE, "one of %s" % sorted(KEY_FILE)),
        "target_of": STRLIST,
        "chunks": COUNT, "bytes": COUNT, "files": COUNT,
        "unusable_files": STRLIST,
        "wrapped_files": COUNT, "compromised": BOOL, "exposed_chunks": COUNT, "exposed_files": COUNT,
    }
    for i, k in enumerate(doc["keys"]):
        if check_fields("keys[%d]" % i, k, kspec):
            if k["key_file"] in ("ok", "unchecked") and k["unusable_files"]:
                err("keys[%d]" % i, "unusable_files listed for a usable key")
            if k["key_file"] not in ("ok", "unchecked") and k["files"] and not k["unusable_files"]:
                err("keys[%d]" % i, "no unusable_files listed for an unusable key with files")
    pspec = {
        "kind": (lambda v: v in PROBLEM, "one of %s" % sorted(PROBLEM)),
        "path": (lambda v: isinstance(v, str) and v.startswith("/"), "a path"),
        "chunk": COUNT_OR_NULL, "offset": COUNT_OR_NULL, "detail": STR,
    }
    for i, p in enumerate(doc["problems"]):
        if check_fields("problems[%d]" % i, p, pspec):
            if (p["chunk"] is None) != (p["offset"] is None):
                err("problems[%d]" % i, "chunk and offset are both null or both set")
            if p["kind"] in ("corrupt-chunk", "malformed-slot") and p["chunk"] is None:
                err("problems[%d]" % i, "a chunk problem names its chunk")
    # the verdicts and the exit status
    if isinstance(tot.get("chunks_off_target"), int) and doc["rotation_complete"] != (tot["chunks_off_target"] == 0):
        err("report", "rotation_complete disagrees with total.chunks_off_target")
    found = len(doc["problems"]) > 0 or tot.get("chunks_unusable", 0) > 0
    if doc["corruption_found"] != found:
        err("report", "corruption_found disagrees with problems / total.chunks_unusable")
    q = doc["key_query"]
    if q is not None:
        qspec = {
            "name": STR,
            "may_release": BOOL,
            "registry": (lambda v: v in REGISTRY, "one of %s" % sorted(REGISTRY)),
            "target_of": STRLIST,
            "chunks": COUNT, "files": COUNT, "file_names": STRLIST, "wrapped_files": COUNT,
            "old_header_copies": COUNT, "uncertain": COUNT,
            "answer": STR,
        }
        if check_fields("key_query", q, qspec):
            if mode == "headers":
                err("report", "the release question needs mode exact or deep")
            if q["may_release"] != (not q["target_of"] and q["chunks"] == 0 and q["wrapped_files"] == 0 and
                                    q["old_header_copies"] == 0 and q["uncertain"] == 0):
                err("key_query",
                    "may_release disagrees with target_of / chunks / wrapped_files / old_header_copies / uncertain")
            if bool(doc["exit"] & 1) == q["may_release"]:
                err("report", "exit bit 1 must be set exactly when the key may not be released")
    elif bool(doc["exit"] & 1) != (not doc["rotation_complete"]):
        err("report", "exit bit 1 must be set exactly when chunks remain under old keys")
    if bool(doc["exit"] & 4) != doc["corruption_found"]:
        err("report", "exit bit 4 must be set exactly when corruption_found")


def main():
    try:
        text = open(sys.argv[1]).read() if len(sys.argv) > 1 else sys.stdin.read()
        doc = json.loads(text)
    except (OSError, ValueError) as e:
        print("invalid: %s" % e)
        return 1
    check(doc)
    for e in errors:
        print("schema violation: " + e)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
