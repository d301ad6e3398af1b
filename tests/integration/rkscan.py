#!/usr/bin/env python3
"""rkscan.py - an independent deep scan of a rekeyfs data directory.

Reads every stored chunk file without the rekeyfs code: picks the valid
header copy (offset 0 or 4096, SHA-256 of bytes 0..4063 at 4064, the higher
seq wins), then reads the 32-byte slot header of every chunk of the file
(slot i at 8192 + i * slot_size; byte 4 is the key-table index; an all-zero
slot header is a hole) and counts chunks per key name.  No key material is
needed (see man/rekeyfs.5 for the layout).

usage: rkscan.py [--files] [--strict] DATADIR

Prints JSON:
  {"keys": {NAME: {"chunks": N, "files": F}},          # from the slot headers
   "header_keys": {NAME: {"chunks": N, "files": F}},    # from the header counts
   "chunk_files": N, "plain_files": N, "chunks": N,
   "dirty": [REL...],          # headers with COUNTS_DIRTY set
   "count_mismatch": [REL...], # header count of a key != its slot count
   "problems": [TEXT...],      # corrupt headers or malformed slots
   "files": {REL: {"size": .., "keys": {NAME: N}, "header": {NAME: N}}}  # with --files
  }
Exit status 0; 1 with --strict when there are problems; 2 on usage errors.
"""
import hashlib
import json
import os
import struct
import sys

MAGIC = bytes([0x89, 0x52, 0x4B, 0x46, 0x53, 0x0D, 0x0A, 0x1A])
HDR_COPY = 4096
HDR_AREA = 8192
SUM_OFF = 4064
KEYS_OFF = 64
KEY_ENT = 96
MAX_KEYS = 16
SLOT_HDR = 32
SLOT_MAGIC = b"RKC1"


def parse_header(buf):
    """One header copy -> dict, or None when it does not verify."""
    if len(buf) < HDR_COPY or buf[:8] != MAGIC:
        return None
    if hashlib.sha256(buf[:SUM_OFF]).digest() != buf[SUM_OFF:SUM_OFF + 32]:
        return None
    version, = struct.unpack_from("<H", buf, 8)
    flags, = struct.unpack_from("<I", buf, 12)
    seq, = struct.unpack_from("<Q", buf, 16)
    chunk_size, slot_size, size = struct.unpack_from("<IIQ", buf, 40)
    keys = []
    for j in range(MAX_KEYS):
        o = KEYS_OFF + KEY_ENT * j
        name = buf[o:o + 64].split(b"\0", 1)[0].decode("utf-8", "replace")
        eflags = buf[o + 81]
        count, = struct.unpack_from("<Q", buf, o + 88)
        keys.append({"name": name, "in_use": bool(eflags & 1), "count": count,
                     "fp": buf[o + 64:o + 80].hex()})
    return {"version": version, "flags": flags, "seq": seq, "chunk_size": chunk_size,
            "slot_size": slot_size, "size": size, "keys": keys}


def scan_file(path, rel, out, want_files):
    with open(path, "rb") as f:
        head = f.read(HDR_AREA)
        if len(head) < 8 or head[:8] != MAGIC:
            out["plain_files"] += 1
            return
        a = parse_header(head[:HDR_COPY])
        b = parse_header(head[HDR_COPY:HDR_AREA]) if len(head) >= HDR_AREA else None
        cands = [h for h in (a, b) if h is not None]
        if not cands:
            out["problems"].append("%s: no header copy verifies" % rel)
            return
        h = max(cands, key=lambda x: x["seq"])
        out["chunk_files"] += 1
        cs, ss, size = h["chunk_size"], h["slot_size"], h["size"]
        if cs == 0 or ss != cs + 64:
            out["problems"].append("%s: header has chunk_size %d slot_size %d" % (rel, cs, ss))
            return
        nchunks = (size + cs - 1) // cs
        counts = {}
        for i in range(nchunks):
            f.seek(HDR_AREA + i * ss)
            sh = f.read(SLOT_HDR)
            if len(sh) == 0 or sh.count(0) == len(sh):
                continue  # hole (or past the end of the stored file)
            if len(sh) < SLOT_HDR or sh[:4] != SLOT_MAGIC:
                out["problems"].append("%s: chunk %d: malformed slot header" % (rel, i))
                continue
            k = sh[4]
            if k >= MAX_KEYS or not h["keys"][k]["in_use"]:
                out["problems"].append("%s: chunk %d: key index %d not in the header" % (rel, i, k))
                continue
            counts[k] = counts.get(k, 0) + 1
    # per key name
    slot_by_name, hdr_by_name = {}, {}
    for j, e in enumerate(h["keys"]):
        if not e["in_use"]:
            continue
        slot_by_name[e["name"]] = slot_by_name.get(e["name"], 0) + counts.get(j, 0)
        hdr_by_name[e["name"]] = hdr_by_name.get(e["name"], 0) + e["count"]
    for name, n in slot_by_name.items():
        if n:
            k = out["keys"].setdefault(name, {"chunks": 0, "files": 0})
            k["chunks"] += n
            k["files"] += 1
            out["chunks"] += n
    for name, n in hdr_by_name.items():
        if n:
            k = out["header_keys"].setdefault(name, {"chunks": 0, "files": 0})
            k["chunks"] += n
            k["files"] += 1
    if h["flags"] & 1:
        out["dirty"].append(rel)
    if any(hdr_by_name.get(n, 0) != slot_by_name.get(n, 0) for n in set(hdr_by_name) | set(slot_by_name)):
        out["count_mismatch"].append(rel)
    if want_files:
        out["files"][rel] = {"size": size, "keys": {n: c for n, c in slot_by_name.items() if c},
                             "header": {n: c for n, c in hdr_by_name.items() if c}}


def main(argv):
    want_files = strict = False
    args = []
    for a in argv[1:]:
        if a == "--files":
            want_files = True
        elif a == "--strict":
            strict = True
        elif a.startswith("-"):
            sys.stderr.write(__doc__)
            return 2
        else:
            args.append(a)
    if len(args) != 1 or not os.path.isdir(args[0]):
        sys.stderr.write(__doc__)
        return 2
    root = args[0]
    out = {"keys": {}, "header_keys": {}, "chunk_files": 0, "plain_files": 0, "chunks": 0,
           "dirty": [], "count_mismatch": [], "problems": [], "temporaries": []}
    if want_files:
        out["files"] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != ".rekeyfs"]
            rel_dir = ""
        dirnames.sort()
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            if not os.path.isfile(p) or os.path.islink(p):
                continue
            if rel_dir == "" and name == ".rekeyfs":
                continue
            rel = "/" + os.path.join(rel_dir, name) if rel_dir else "/" + name
            if name.startswith(".rekeyfs-tmp."):
                # an interrupted whole-file rekey's or conversion's temporary:
                # not part of the data, removed by the next sweep
                out["temporaries"].append(rel)
                continue
            scan_file(p, rel, out, want_files)
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 1 if strict and out["problems"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
