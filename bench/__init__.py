"""Benchmarks run by `make bench` (`python -m bench`).

Each benchmark module exposes `async def run(ctx: BenchContext) -> list[Result]`
and is listed in `bench.__main__.BENCHMARKS`; every row lands in one table so
gateway numbers print beside the direct-to-simulator baseline.
"""
