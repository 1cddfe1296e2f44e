"""``python -m benchmarks [--size small|100k|1m] [--json PATH] [--gate] [--repeat N] [--write-results]``.

Kept free of top-level imports: spawned peak-RSS workers re-import this module as ``__mp_main__``.
"""

if __name__ == "__main__":
    from benchmarks.cli import main

    raise SystemExit(main())
