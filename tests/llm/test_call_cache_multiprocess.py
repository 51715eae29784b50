"""Several processes writing one call-cache file at once (a parallel sweep): nothing locked, lost or split."""
from __future__ import annotations

import multiprocessing as mp
import random
from pathlib import Path

import pytest

from oyster_exp.llm.base import ChatResponse, Usage
from oyster_exp.llm.cache import CallCache

KEYS = [f"key-{i:03d}" for i in range(150)]
PROCS = 4


def _worker(path: str, who: int, cache: CallCache | None, start: object, out: mp.Queue) -> None:
    """Put every key (in its own order, with its own value), read back a random earlier key in between."""
    try:
        cache = cache or CallCache(Path(path))
        start.wait(timeout=600)  # type: ignore[attr-defined] - every writer starts together (spawned children import slowly on a loaded box)
        rng = random.Random(who)
        order = KEYS[:]
        rng.shuffle(order)
        seen: dict[str, str] = {}
        for n, key in enumerate(order):
            if n == len(order) // 2:  # everyone is half-way before anyone goes on: the writers really interleave
                start.wait(timeout=600)  # type: ignore[attr-defined]
            stored = cache.put(key, ChatResponse(content=f"{key} from {who}", usage=Usage(prompt_tokens=who)))
            seen[key] = stored.content
            probe = order[rng.randrange(n + 1)]
            got = cache.get(probe)
            assert got is not None and got.content == seen[probe], (probe, got, seen[probe])
        out.put((who, seen, None))
    except Exception as e:
        out.put((who, {}, f"{type(e).__name__}: {e}"))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_concurrent_writers_agree_and_lose_nothing(tmp_path: Path, method: str) -> None:
    path = tmp_path / "calls.sqlite"
    ctx = mp.get_context(method)
    inherited = None
    if method == "fork":  # the parent opens and uses the cache first; children must not reuse its connection
        inherited = CallCache(path)
        inherited.put("parent", ChatResponse(content="parent"))
    out: mp.Queue = ctx.Queue()
    start = ctx.Barrier(PROCS)
    procs = [ctx.Process(target=_worker, args=(str(path), who, inherited, start, out)) for who in range(PROCS)]
    for p in procs:
        p.start()
    results = [out.get(timeout=900) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    errors = [err for _, _, err in results if err]
    assert errors == []
    final = CallCache(path)
    assert len(final) == len(KEYS) + (1 if inherited else 0), "an entry was lost"
    stored = {k: final.get(k).content for k in KEYS}  # type: ignore[union-attr]
    for who, seen, _ in results:
        assert seen == stored, f"process {who} went on with a reply that is not the stored one"
    assert len({v.split(" from ")[1] for v in stored.values()}) > 1, "expected real contention between writers"
