"""The README's "Extend it" recipe, run as written: its policy file dropped into `csa/pair_policies/` and its
YAML into a copy of `conf/pairs/` make `pairs=best_vs_second` compose, build, and choose the runner-up."""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import oyster_exp.csa.pair_policies as policies
import oyster_exp.run.cli  # noqa: F401 - registers the root schema and the resolvers, as the CLI does
from oyster_exp.config.structured import validate_config
from oyster_exp.run.components import register_all

ROOT = Path(__file__).resolve().parents[2]


def _block(text: str, lang: str, first_line: str) -> str:
    for body in re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S):
        if body.startswith(first_line):
            return body
    raise AssertionError(f"README has no ```{lang} block starting {first_line!r}")


def test_the_readme_pair_policy_recipe_works_as_written(tmp_path: Path) -> None:
    from test_pairs import PROMPT, _e, _rec

    from oyster_exp.csa.pairs import pair_records

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    module = Path(policies.__file__).parent / "best_vs_second.py"
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf, symlinks=True)
    (conf / "pairs" / "best_vs_second.yaml").write_text(_block(readme, "yaml", "# conf/pairs/best_vs_second.yaml"))
    module.write_text(_block(readme, "python", "# oyster_exp/csa/pair_policies/best_vs_second.py"))
    try:
        register_all()                               # the package is imported whole: the new file registers itself
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose(config_name="config", overrides=["model=tiny_random", "pairs=best_vs_second",
                                                           "pairs.min_margin=0.1"])
        validate_config(cfg, resolve=False)
        policy = instantiate(cfg.pairs, _convert_="all")
        assert type(policy).__name__ == "BestVsSecond" and policy.min_margin == 0.1
        rec = _rec(_e(0, 0.2, "initial"), _e(1, 1.5, "best"), _e(2, 0.9, "second"))
        (pair,) = pair_records(rec, PROMPT, policy)
        assert (pair.chosen.split("</think>")[-1].strip(), pair.rejected.split("</think>")[-1].strip()) == \
            ("best", "second")
        assert pair.policy == "best_vs_second"
    finally:
        module.unlink(missing_ok=True)
        sys.modules.pop("oyster_exp.csa.pair_policies.best_vs_second", None)
