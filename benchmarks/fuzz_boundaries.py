"""The long fuzz run of refquant's input boundaries (:mod:`refquant.fuzz`): 12,000 seeded
malformed inputs, each outcome classified; prints the table per boundary and every failure.

Run:  python benchmarks/fuzz_boundaries.py [--seed 0] [--scale 1.0] [--json results.json]

``--scale`` multiplies every budget (the defaults total 12,000 cases, 4 to 6 minutes on two
cores; each case has 20 s, 30 s for a numeric call, before it counts as a hang). Failures are
listed by kind with the exact mutation of one case, so each can be rebuilt by hand
(``--all-failures`` lists every case). The exit status is 1 if any case failed (an unclear
error, garbage accepted or a hang), else 0. The tests run the same code with a bounded budget
(``tests/test_fuzz_boundaries.py``).
"""
import argparse
import json
import sys
import tempfile
import time

from _machine import machine_line

from refquant import fuzz

BUDGETS = {"Darknet cfg text": 2400, "Darknet .weights": 1200, "VOC XML, images, names, image sets": 2000,
           "quantization plan JSON": 1600, "golden vector directory": 800, "training checkpoint": 800,
           "numeric APIs (PGM fit, optimal quantizer, ...)": 2400, "CLI arguments": 800}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of every boundary's mutations (default 0)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every budget (default 1)")
    parser.add_argument("--json", default=None, help="also write every outcome to this JSON file")
    parser.add_argument("--all-failures", action="store_true", help="list every failure, not one per kind")
    args = parser.parse_args(argv)
    budgets = {name: max(1, round(budget * args.scale)) for name, budget in BUDGETS.items()}
    print(machine_line(), flush=True)
    start = time.perf_counter()
    last = {}

    def progress(boundary, done, total):
        if done == total or done - last.get(boundary, 0) >= 200:
            last[boundary] = done
            print(f"  {boundary}: {done}/{total} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="refquant-fuzz-") as folder:
        outcomes = fuzz.run(budgets, args.seed, folder, progress=progress)
    seconds = time.perf_counter() - start
    print(f"refquant fuzz, seed {args.seed}: {len(outcomes)} inputs in {seconds:.0f} s")
    print()
    print(fuzz.table(outcomes))
    failures = [outcome for outcome in outcomes if outcome.kind in fuzz.FAILURES]
    if failures:
        print(f"\n{len(failures)} failures, by kind (count, one example):")
        for (boundary, call, what), found in sorted(fuzz.failure_kinds(outcomes).items(), key=lambda kv: -len(kv[1])):
            print(f"- {len(found):4d}  [{boundary}] {call} -> {what}\n        e.g. {found[0].case}\n"
                  f"             {found[0].detail}")
    if args.all_failures:
        for outcome in failures:
            print(f"- [{outcome.boundary}] {outcome.kind}: {outcome.case}\n    -> {outcome.detail}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"seed": args.seed, "budgets": budgets, "seconds": round(seconds, 1),
                       "outcomes": [outcome.__dict__ for outcome in outcomes]}, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
