#!/usr/bin/env python3
"""Compares the smoke rows a kd binary wrote (run_smoke.sh) with a pinned file, value for value.

    python3 benchmarks/pins/compare.py OUT/results benchmarks/pins/smoke-3adf348.csv

Exit 1 and the differing rows when any pinned row is missing or differs; timing columns
(wall_seconds, examples_per_second, started_at) and provenance (git_commit) are not compared.
"""
import csv
import glob
import os
import sys

KEY = ["experiment", "profile", "variant", "seed", "role", "model", "metric"]
VALUES = ["params", "train_examples", "eval_examples", "split", "value", "best_value", "best_epoch",
          "config_hash", "teacher_hash"]


def main(results_dir, pinned_path):
    got = {}
    for f in glob.glob(os.path.join(results_dir, "*.csv")):
        for r in csv.DictReader(open(f)):
            got[tuple(r[k] for k in KEY)] = r
    bad = 0
    pinned = list(csv.DictReader(open(pinned_path)))
    for p in pinned:
        k = tuple(p[c] for c in KEY)
        r = got.get(k)
        if r is None:
            print("missing:", k)
            bad += 1
            continue
        diff = [(c, p[c], r[c]) for c in VALUES if p[c] != r[c]]
        if diff:
            print("differs:", k, diff)
            bad += 1
    print(f"{len(pinned) - bad} of {len(pinned)} pinned rows equal")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
