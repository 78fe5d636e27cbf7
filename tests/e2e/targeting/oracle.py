"""The oracle for brine's target matching: real Salt's own minion-side matchers.

Reads one JSON case per line on stdin and writes one answer per line: "T" or "F" (the truth
value the minion's matcher returns), or "E <exception>" when it raises. Kinds:

  {"kind": "re", "pattern": P, "text": T}          bool(re.match(P, T))
  {"kind": "fnmatch", "pattern": P, "text": T}     fnmatch.fnmatch(T, P)
  {"kind": "lower", "text": T}                     T.lower() (printed back as JSON)
  {"kind": "target", "tgt": ..., "tgt_type": ..., "delimiter": D, "id": I,
   "grains": {...}, "pillar": {...}, "nodegroups": {...}}
                                                   what Minion._target_load asks the matcher

Run with the Python of a Salt venv (scripts/salt-peer.sh). This calls Salt; it copies none of it.
"""

import copy
import fnmatch
import json
import logging
import re
import sys
import warnings

import salt.config
import salt.loader

logging.disable(logging.CRITICAL)
warnings.simplefilter("ignore")

BASE = copy.deepcopy(salt.config.DEFAULT_MINION_OPTS)
BASE["id"] = "oracle"
BASE["grains"] = {}
BASE["pillar"] = {}
MATCHERS = salt.loader.matchers(BASE)


def target(case):
    opts = dict(BASE)
    opts["id"] = case["id"]
    opts["grains"] = case["grains"]
    opts["pillar"] = case["pillar"]
    opts["nodegroups"] = case.get("nodegroups") or {}
    tgt_type = case["tgt_type"]
    func = MATCHERS.get(f"{tgt_type}_match.match")
    if func is None:
        return False
    # As salt/minion.py Minion._target_load calls the matchers.
    if tgt_type in ("grain", "grain_pcre", "pillar"):
        return func(case["tgt"], delimiter=case["delimiter"], opts=opts, minion_id=case["id"])
    if tgt_type == "compound":
        # compound_match keeps the matchers it loaded in its module context.
        return func(case["tgt"], opts=opts, minion_id=case["id"])
    return func(case["tgt"], opts=opts, minion_id=case["id"])


def answer(case):
    kind = case["kind"]
    if kind == "re":
        return bool(re.match(case["pattern"], case["text"]))
    if kind == "fnmatch":
        return fnmatch.fnmatch(case["text"], case["pattern"])
    if kind == "lower":
        return case["text"].lower()
    if kind == "target":
        return bool(target(case))
    raise ValueError(f"unknown kind {kind}")


def main():
    out = sys.stdout
    for line in sys.stdin:
        case = json.loads(line)
        try:
            a = answer(case)
            if isinstance(a, str):
                out.write("S " + json.dumps(a) + "\n")
            else:
                out.write("T\n" if a else "F\n")
        except Exception as e:  # pylint: disable=broad-except
            out.write("E " + type(e).__name__ + "\n")
    out.flush()


if __name__ == "__main__":
    main()
