"""Query sources: `data=seed` and `data=file` build their component, which loads the rows the run uses."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.utils import instantiate

from oyster_exp.config.errors import ConfigError
from oyster_exp.config.structured import validate_config
from oyster_exp.data.seed import load_seed_queries
from oyster_exp.data.sources import FileQueries, SeedQueries


def test_seed_option_loads_the_packaged_set_filtered_and_limited(compose_cfg) -> None:
    source = instantiate(compose_cfg().data)
    assert type(source) is SeedQueries and (source.limit, source.heldout_fraction) == (12, 0.34)
    rows = source.rows()
    assert [r["id"] for r in rows] == [r["id"] for r in load_seed_queries()][:12]
    cn = instantiate(compose_cfg("data.languages=[cn]", "data.limit=3").data).rows()
    assert len(cn) == 3 and {r["language"] for r in cn} == {"cn"}
    everything = instantiate(compose_cfg("data.limit=null").data).rows()
    assert len(everything) == len(load_seed_queries())


def test_file_option_reads_the_users_file(compose_cfg, tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (
        {"id": 1, "query": "How do I stay safe online?"},
        {"id": "b", "query": "你好", "language": "cn"},
        {"id": "c", "query": "What is a strong password?"})) + "\n")
    cfg = compose_cfg("data=file", f"data.path={path}", "data.languages=[en]")
    validate_config(cfg, resolve=False)
    source = instantiate(cfg.data)
    assert type(source) is FileQueries and source.file() == path and source.heldout_fraction == 0.25
    assert [r["id"] for r in source.rows()] == ["1", "c"]                     # cn filtered out, ids as strings
    path.write_text('{"id": "x"}\n')
    with pytest.raises(ValueError, match=rf"{path}:1: field 'query'"):
        source.rows()


def test_file_option_without_a_path_names_the_key(compose_cfg) -> None:
    with pytest.raises(ConfigError) as e:
        validate_config(compose_cfg("data=file"), resolve=False)
    assert e.value.key == "data.path"
    with pytest.raises(Exception, match="path"):                                # the seed set has no path knob
        compose_cfg("data=seed", "data.path=/tmp/x.jsonl")
