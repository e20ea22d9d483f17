"""The shipped configs: short leaves over shared bases (experiments/configs/_base_/: datasets/,
models/, schedules/), resolving key for key to the configs they were written as single files."""
from pathlib import Path

import pytest
import yaml

from raccnn.config import load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "experiments" / "configs"
BASES = CONFIGS / "_base_"
FLAT = Path(__file__).resolve().parent / "fixtures" / "flat_configs"


def leaves() -> list[Path]:
    return sorted(CONFIGS.glob("*.yaml"))


def named_bases(path: Path) -> list[Path]:
    bases = yaml.safe_load(path.read_text()).get("_base_", [])
    return [(path.parent / b).resolve() for b in ([bases] if isinstance(bases, str) else bases)]


@pytest.mark.parametrize("name", sorted(p.name for p in FLAT.glob("*.yaml")))
def test_a_shipped_config_resolves_as_its_flat_version(name):
    """Every key equal, ``name`` and ``work_dir`` (from the file's stem) included."""
    shipped, flat = load_config(CONFIGS / name), load_config(FLAT / name)
    assert shipped == flat
    assert shipped["work_dir"] == f"work_dirs/{Path(name).stem}"


def test_every_shipped_config_is_a_leaf_over_the_bases():
    """Each config under experiments/configs/ names its bases under _base_/ (a dataset, a model and
    a schedule), each of which exists, and every base is used by some config."""
    used = set()
    for leaf in leaves():
        bases = named_bases(leaf)
        kinds = sorted(b.parent.name for b in bases if b.is_relative_to(BASES.resolve()))
        assert kinds == ["datasets", "models", "schedules"], f"{leaf.name}: bases {bases}"
        assert all(b.is_file() for b in bases), leaf.name
        used.update(bases)
    assert leaves() and {p.resolve() for p in BASES.rglob("*.yaml")} == used
