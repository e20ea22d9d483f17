import textwrap

import pytest
import yaml

from raccnn.config import (
    SCHEMA,
    ConfigError,
    Key,
    default_config,
    load_config,
    parse_cli_opts,
    resolve_config,
    save_config,
)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def chain(tmp_path):
    """child.yaml -> _base_/mid.yaml -> _base_/root.yaml"""
    write(tmp_path / "_base_/root.yaml", """
        seed: 1
        model:
          input_sizes: [32, 32, 32]
          apn: {hidden: 64, pool_size: 2}
        data:
          hit_parts: [beak, tail]
    """)
    write(tmp_path / "_base_/mid.yaml", """
        _base_: root.yaml
        seed: 2
        model:
          apn: {hidden: 128}
    """)
    return write(tmp_path / "child.yaml", """
        _base_: [_base_/mid.yaml]
        data:
          hit_parts: [eye]
        model:
          crop: {k: 5}
    """)


# ----------------------------------------------------------------- inheritance


def test_two_level_inheritance_merges_dicts_and_replaces_lists(chain):
    cfg = load_config(chain)
    assert cfg["seed"] == 2                           # mid overrides root
    assert cfg["model"]["apn"]["hidden"] == 128       # mid overrides root inside a dict
    assert cfg["model"]["apn"]["pool_size"] == 2      # root's sibling key survives the merge
    assert cfg["model"]["input_sizes"] == [32, 32, 32]
    assert cfg["data"]["hit_parts"] == ["eye"]        # lists replace, never concatenate
    assert cfg["model"]["crop"] == {"k": 5.0, "grad": "mask", "impl": "auto", "compile": False}
    assert isinstance(cfg["model"]["crop"]["k"], float)


def test_defaults_name_and_work_dir(chain):
    cfg = load_config(chain)
    assert cfg["name"] == "child"
    assert cfg["work_dir"] == "work_dirs/child"
    assert cfg["train"]["alternate"]["apn"]["min_delta"] == 1e-4
    assert cfg["data"]["root"] == "data/fgsynth"
    assert set(cfg) == set(SCHEMA)


def test_explicit_name_and_work_dir_are_kept(tmp_path):
    path = write(tmp_path / "x.yaml", "name: run1\nwork_dir: /tmp/elsewhere\n")
    cfg = load_config(path)
    assert cfg["name"] == "run1" and cfg["work_dir"] == "/tmp/elsewhere"
    path = write(tmp_path / "y.yaml", "name: run2\n")
    assert load_config(path)["work_dir"] == "work_dirs/run2"


def test_bases_merge_in_order(tmp_path):
    write(tmp_path / "a.yaml", "seed: 1\ndata: {batch_size: 8}\n")
    write(tmp_path / "b.yaml", "seed: 2\ndata: {num_workers: 2}\n")
    cfg = load_config(write(tmp_path / "c.yaml", "_base_: [a.yaml, b.yaml]\n"))
    assert cfg["seed"] == 2
    assert cfg["data"]["batch_size"] == 8 and cfg["data"]["num_workers"] == 2


def test_empty_file_gives_defaults(tmp_path):
    cfg = load_config(write(tmp_path / "empty.yaml", ""))
    assert cfg == {**default_config(), "name": "empty", "work_dir": "work_dirs/empty"}


def test_exponent_floats_without_dot(tmp_path):
    cfg = load_config(write(tmp_path / "x.yaml", "train: {weight_decay: 1e-4}\n"))
    assert cfg["train"]["weight_decay"] == 1e-4


def test_cycle_is_reported(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match=r"circular _base_ inheritance: .*a\.yaml -> .*b\.yaml"
                                          r" -> .*a\.yaml"):
        load_config(tmp_path / "a.yaml")


def test_missing_base_names_both_files(tmp_path):
    path = write(tmp_path / "a.yaml", "_base_: nope.yaml\n")
    with pytest.raises(ConfigError, match=r"not found: .*nope\.yaml \(included from .*a\.yaml\)"):
        load_config(path)


def test_invalid_yaml_names_file(tmp_path):
    path = write(tmp_path / "bad.yaml", "model: {apn: [\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML"):
        load_config(path)


def test_a_key_written_twice_is_refused_with_both_lines(tmp_path):
    """YAML keeps the last of two equal keys: a whole earlier train: block would vanish."""
    write(tmp_path / "base.yaml", "seed: 3\n")
    path = write(tmp_path / "dup.yaml", """
        _base_: base.yaml
        train:
          pretrain_cls: {epochs: 1}
        model:
          width: 4
        train:
          init_apn: {epochs: 1}
    """)  # dedent leaves a blank first line: the keys are on lines 3, 5 and 7
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (f"{path}: duplicate key 'train' at lines 3 and 7 (only the last would count); "
                              f"keep one")
    nested = write(tmp_path / "nested.yaml", "model:\n  apn: {hidden: 8, hidden: 16}\n")
    with pytest.raises(ConfigError, match=r"nested\.yaml: duplicate key 'hidden' at lines 2 and 2"):
        load_config(nested)
    write(tmp_path / "base.yaml", "seed: 3\nseed: 4\n")  # in a _base_ file, that file is named
    with pytest.raises(ConfigError, match=r"/base\.yaml: duplicate key 'seed' at lines 1 and 2"):
        load_config(write(tmp_path / "child.yaml", "_base_: base.yaml\n"))
    with pytest.raises(ConfigError, match=r"invalid option .*duplicate key 'hidden'"):
        parse_cli_opts(["model.apn={hidden: 8, hidden: 16}"])
    # a YAML merge key overridden by the mapping's own key stays fine
    ok = write(tmp_path / "ok.yaml", "model:\n  apn:\n    <<: {hidden: 8, pool_size: 2}\n    hidden: 16\n")
    assert load_config(ok)["model"]["apn"]["hidden"] == 16


def test_paths_expand_home_and_a_relative_root_stays_relative(tmp_path, monkeypatch):
    """data.root=~/x must not become a folder named '~' under the current directory."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home = str(tmp_path / "home")
    cfg = load_config(write(tmp_path / "c.yaml", "data: {root: ~/fgsynth}\n"),
                      ["work_dir=~/runs/a", "model.pretrained=~/vgg.pth"])
    assert cfg["data"]["root"] == f"{home}/fgsynth"
    assert cfg["work_dir"] == f"{home}/runs/a"
    assert cfg["model"]["pretrained"] == f"{home}/vgg.pth"
    assert load_config(tmp_path / "c.yaml", ["model.pretrained=true"])["model"]["pretrained"] is True
    # relative paths are kept as written: relative to the current working directory
    cfg = load_config(tmp_path / "c.yaml", ["data.root=data/x", "work_dir=runs/b"])
    assert cfg["data"]["root"] == "data/x" and cfg["work_dir"] == "runs/b"


# ----------------------------------------------------------------- options


def test_parse_cli_opts_types():
    opts = parse_cli_opts(["a=true", "b=3", "c=0.1", "d=[64,64]", "e=null", "f=1e-3",
                           "g=timm:resnet18", "h=data/cub", "i=''", "j.k=x=y"])
    assert opts == {"a": True, "b": 3, "c": 0.1, "d": [64, 64], "e": None, "f": 1e-3,
                    "g": "timm:resnet18", "h": "data/cub", "i": "", "j.k": "x=y"}
    assert parse_cli_opts(None) == {}


@pytest.mark.parametrize("opt, message", [
    ("train.lr", "expected KEY=VALUE"),
    ("=3", "expected KEY=VALUE"),
    ("a..b=1", "not a dotted key"),
    ("a.b=", "empty value"),
    ("model.input_sizes=[64,64", "value is not valid YAML"),
])
def test_parse_cli_opts_errors_name_the_option(opt, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_cli_opts([opt])
    assert repr(opt) in str(err.value)


def test_opts_override_file_values(chain):
    cfg = load_config(chain, ["seed=7", "model.apn.hidden=16", "data.flip=false",
                              "model.n_scales=2", "model.input_sizes=[48,48]",
                              "model.pretrained=weights/vgg.pth", "work_dir=null",
                              "train.alternate.cls.lr=1"])
    assert cfg["seed"] == 7
    assert cfg["model"]["apn"] == {"hidden": 16, "pool_size": 2, "tl_min": 0.1,
                                   "tl_max": 0.5, "keep_inside": True}
    assert cfg["data"]["flip"] is False
    assert cfg["model"]["input_sizes"] == [48, 48]
    assert cfg["model"]["pretrained"] == "weights/vgg.pth"
    assert cfg["work_dir"] == "work_dirs/child"
    assert cfg["train"]["alternate"]["cls"]["lr"] == 1.0
    assert isinstance(cfg["train"]["alternate"]["cls"]["lr"], float)


def test_opts_mapping_value_merges(chain):
    cfg = load_config(chain, ["model.apn={hidden: 8}"])
    assert cfg["model"]["apn"]["hidden"] == 8 and cfg["model"]["apn"]["pool_size"] == 2


def test_opts_as_parsed_mapping(chain):
    cfg = load_config(chain, {"data.batch_size": 4})
    assert cfg["data"]["batch_size"] == 4


# ----------------------------------------------------------------- validation errors


def error_of(path, opts=None):
    with pytest.raises(ConfigError) as err:
        load_config(path, opts)
    return str(err.value)


def test_unknown_key_suggests_and_lists_siblings(tmp_path):
    path = write(tmp_path / "typo.yaml", "train:\n  alternate:\n    roundz: 4\n")
    msg = error_of(path)
    assert "unknown key 'train.alternate.roundz'" in msg
    assert "(did you mean 'train.alternate.rounds'?)" in msg
    assert "valid keys under 'train.alternate': apn, cls, ema, localise, localiser, margin, rounds" in msg
    assert "typo.yaml" in msg


def test_unknown_top_level_key_without_close_match(tmp_path):
    msg = error_of(write(tmp_path / "x.yaml", "zzzzzz: 1\n"))
    assert "unknown key 'zzzzzz'; valid keys at the top level: data, deterministic" in msg
    assert "did you mean" not in msg


def test_unknown_key_from_opts_names_the_option(chain):
    msg = error_of(chain, ["data.batchsize=4"])
    assert "unknown key 'data.batchsize' (did you mean 'data.batch_size'?)" in msg
    assert "command-line option 'data.batchsize=4'" in msg


def test_wrong_type_names_key_type_value_and_file(tmp_path):
    msg = error_of(write(tmp_path / "t.yaml", "train:\n  pretrain_cls: {lr: abc}\n"))
    assert msg.startswith("train.pretrain_cls.lr: expected float, got str 'abc'")
    assert "t.yaml" in msg


def test_error_names_the_base_file_that_set_the_value(tmp_path):
    write(tmp_path / "_base_/bad.yaml", "data: {flip: 1}\n")
    msg = error_of(write(tmp_path / "child.yaml", "_base_: _base_/bad.yaml\nseed: 3\n"))
    assert "data.flip: expected bool, got int 1" in msg
    assert "bad.yaml" in msg and "child.yaml" not in msg


@pytest.mark.parametrize("opt, expected", [
    ("model.width=true", "model.width: expected int, got bool True"),
    ("seed=1.5", "seed: expected int, got float 1.5"),
    ("data.flip=yes please", "data.flip: expected bool, got str 'yes please'"),
    ("model.pretrained=3", "model.pretrained: expected bool or str, got int 3"),
    ("device=null", "device: expected str, got null"),
    ("data.hit_parts=beak", "data.hit_parts: expected list[str], got str 'beak'"),
    ("model.input_sizes=[64,x,64]", "model.input_sizes[1]: expected int, got str 'x'"),
    ("model.input_sizes=[64,true,64]", "model.input_sizes[1]: expected int, got bool True"),
    ("data=3", "data: expected a mapping, got int 3"),
])
def test_type_errors(chain, opt, expected):
    assert error_of(chain, [opt]).startswith(expected)


def test_int_accepted_for_float(chain):
    cfg = load_config(chain, ["model.dropout=0", "train.momentum=1"])
    assert cfg["model"]["dropout"] == 0.0 and isinstance(cfg["model"]["dropout"], float)


def test_invalid_choice_lists_allowed_values(chain):
    msg = error_of(chain, ["model.crop.grad=masks"])
    assert msg.startswith("model.crop.grad: 'masks' is not one of ['mask', 'grid', 'both', 'caffe']"
                          " (did you mean 'mask'?)")


def test_backbone_accepts_vgg_and_timm_names(chain):
    assert load_config(chain, ["model.backbone=vgg16_bn"])["model"]["backbone"] == "vgg16_bn"
    assert load_config(chain, ["model.backbone=timm:resnet18"])["model"]["backbone"] == \
        "timm:resnet18"
    msg = error_of(chain, ["model.backbone=vgg20"])
    assert msg.startswith("model.backbone: 'vgg20' is not one of")
    assert "timm:<model name>" in msg and "(did you mean 'vgg19'?)" in msg
    assert "names no timm model" in error_of(chain, ["model.backbone='timm:'"])


@pytest.mark.parametrize("opt, expected", [
    ("data.val_fraction=0.95", "data.val_fraction: 0.95 is above the maximum 0.9"),
    ("data.batch_size=0", "data.batch_size: 0 is below the minimum 1"),
    ("model.n_scales=6", "model.n_scales: 6 is above the maximum 5"),
    ("model.dropout=-0.1", "model.dropout: -0.1 is below the minimum 0.0"),
    ("model.input_sizes=[64,4,64]", "model.input_sizes[1]: 4 is below the minimum 8"),
])
def test_bounds(chain, opt, expected):
    assert error_of(chain, [opt]).startswith(expected)


def test_cross_field_input_sizes(chain):
    msg = error_of(chain, ["model.n_scales=2"])
    assert msg.startswith("model.input_sizes has 3 entries [32, 32, 32] but model.n_scales is 2")
    assert "model.input_sizes from" in msg and "root.yaml" in msg
    assert "model.n_scales from command-line option 'model.n_scales=2'" in msg


def test_cross_field_tl_range(chain):
    msg = error_of(chain, ["model.apn.tl_min=0.4", "model.apn.tl_max=0.3"])
    assert "model.apn.tl_min <= model.apn.tl_max" in msg and "tl_min=0.4" in msg
    assert "0 < model.apn.tl_min" in error_of(chain, ["model.apn.tl_min=0"])


def test_cross_field_crop_and_epochs(chain):
    assert error_of(chain, ["data.crop=200"]).startswith(
        "data.crop (200) must not exceed data.resize (160)")
    assert error_of(chain, ["train.alternate.apn.min_epochs=5"]).startswith(
        "train.alternate.apn.min_epochs (5) must not exceed train.alternate.apn.max_epochs (4)")
    assert error_of(chain, ["train.alternate.cls.min_epochs=3", "train.alternate.cls.max_epochs=2"]).startswith(
        "train.alternate.cls.min_epochs (3) must not exceed train.alternate.cls.max_epochs (2)")


def test_selection_from_a_round_the_schedule_lacks_is_refused(chain):
    rounds = load_config(chain)["train"]["alternate"]["rounds"]
    assert error_of(chain, [f"train.alternate.select_from_round={rounds + 1}"]).startswith(
        f"train.alternate.select_from_round ({rounds + 1}) must not exceed train.alternate.rounds ({rounds})")
    assert load_config(chain, [f"train.alternate.select_from_round={rounds}"])["train"]["alternate"]["select_from_round"] == rounds
    # no alternation: nothing to select from, nothing to refuse
    assert load_config(chain, ["train.alternate.rounds=0", "train.alternate.select_from_round=2"])


def test_a_learning_rate_above_the_limit_needs_force_lr(chain):
    assert error_of(chain, ["train.pretrain_cls.lr=11"]).startswith(
        "train.pretrain_cls.lr: 11.0 is above 10.0, no sane learning rate; set train.force_lr=true")
    assert error_of(chain, ["train.alternate.apn.lr=20"]).startswith("train.alternate.apn.lr: 20.0 is above 10.0")
    assert load_config(chain, ["train.pretrain_cls.lr=11", "train.force_lr=true"])["train"]["pretrain_cls"]["lr"] == 11


def test_a_crop_steepness_of_zero_is_refused(chain):
    assert error_of(chain, ["model.crop.k=0"]).startswith("model.crop.k: 0 must be > 0")
    assert load_config(chain, ["model.crop.k=2.5"])["model"]["crop"]["k"] == 2.5


def test_errors_are_deterministic(tmp_path):
    path = write(tmp_path / "x.yaml", "seed: a\ndevice: gpu\nbogus: 1\n")
    first = error_of(path)
    assert all(error_of(path) == first for _ in range(3))


def test_a_base_mapping_cannot_be_replaced_whole(tmp_path):
    path = write(tmp_path / "x.yaml", "model: {_delete_: true}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'model\._delete_'"):
        load_config(path)


# ----------------------------------------------------------------- schema extension


def test_new_fields_and_free_form_dicts(monkeypatch, tmp_path):
    model = dict(SCHEMA["model"])
    model["attention_kwargs"] = Key({})
    model["strides"] = Key([1, 2], length=2)
    monkeypatch.setitem(SCHEMA, "model", model)

    cfg = default_config()
    assert cfg["model"]["attention_kwargs"] == {} and cfg["model"]["strides"] == [1, 2]
    cfg = resolve_config({"model": {"attention_kwargs": {"anything": [1, {"x": 2}]}}})
    assert cfg["model"]["attention_kwargs"] == {"anything": [1, {"x": 2}]}
    with pytest.raises(ConfigError, match=r"model\.strides: expected 2 entries, got 3"):
        resolve_config({"model": {"strides": [1, 2, 3]}})
    with pytest.raises(ConfigError, match=r"model\.attention_kwargs: expected mapping, got int"):
        resolve_config({"model": {"attention_kwargs": 3}})


def test_schema_defaults_pass_validation():
    cfg = default_config()
    assert resolve_config(cfg) == cfg


def test_defaults_are_not_shared_between_configs():
    a = default_config()
    a["model"]["input_sizes"].append(1)
    a["data"]["hit_parts"].append("x")
    b = default_config()
    assert b["model"]["input_sizes"] == [64, 64, 64] and b["data"]["hit_parts"] == []


# ----------------------------------------------------------------- saving


def test_save_and_reload_round_trip(chain, tmp_path):
    cfg = load_config(chain, ["train.weight_decay=1e-5", "model.backbone=timm:resnet18"])
    out = tmp_path / "out/run/config.yaml"
    save_config(cfg, out)
    assert yaml.safe_load(out.read_text())["model"]["apn"]["hidden"] == 128
    assert load_config(out) == cfg  # name and work_dir were written explicitly
    assert [p.name for p in out.parent.iterdir()] == ["config.yaml"]


def test_save_config_keeps_old_file_on_failure(tmp_path, monkeypatch):
    out = tmp_path / "config.yaml"
    save_config(default_config(), out)
    before = out.read_text()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("raccnn.config.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_config({**default_config(), "seed": 5}, out)
    assert out.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_racnn_needs_two_scales_and_a_trained_fusion_head(tmp_path):
    from raccnn.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="model.n_scales"):
        load_config("experiments/configs/fgsynth_default.yaml", ["model.n_scales=1", "model.input_sizes=[64]"])
    with pytest.raises(ConfigError, match="train.fusion.epochs"):
        load_config("experiments/configs/fgsynth_default.yaml", ["train.fusion.epochs=0"])


# ----------------------------------------------------------------- the schema's limits are the real ones


@pytest.mark.parametrize("opt, expected", [
    ("data.synth.classes=12", "data.synth.classes: 12 is above the maximum 10"),
    ("data.synth.size=64", "data.synth.size: 64 is below the minimum 96"),
    ("data.synth.images_per_class=2", "data.synth.images_per_class: 2 is below the minimum 3"),
    ("data.val_fraction=-0.1", "data.val_fraction: -0.1 is below the minimum 0"),
    ("data.split_seed=-1", "data.split_seed: -1 is below the minimum 0"),  # numpy's generators refuse it
    ("data.synth.seed=-1", "data.synth.seed: -1 is below the minimum 0"),
    ("model.input_sizes=[64,8,64]", "model.input_sizes [64, 8, 64]: vgg16 needs inputs of at least 16 px"),
    ("model.attention.type=se", None),
    ("model.attention.stages=[5]", "model.attention.stages [5]: vgg_small has 4 stages"),
    ("model.attention.stages=[]", "model.attention.type 'se' needs model.attention.stages"),
    ("model.attention.kwargs={bogus: 1}", "model.attention.kwargs: attention type 'se': bad keyword"),
    ("model.proposer=oracle", "model.proposer: 'oracle' needs data.hit_parts"),
])
def test_values_that_cannot_run_are_refused(opt, expected):
    base = ["data.hit_parts=[]", "model.attention.type=se", "model.attention.stages=[2]"]
    if opt.startswith("model.input_sizes"):
        base.append("model.backbone=vgg16")
    if expected is None:
        load_config("experiments/configs/fgsynth_default.yaml", base + [opt])
        return
    with pytest.raises(ConfigError) as err:
        load_config("experiments/configs/fgsynth_default.yaml", base + [opt])
    assert str(err.value).startswith(expected), str(err.value)


def test_attention_kwargs_are_checked_at_the_widths_of_their_stages():
    """SASA's 4 heads need channels that split into heads of even width: vgg_small of width 6 has
    12 channels at stage 2 (refused before any model is built) and 48 at stage 4 (accepted)."""
    sasa = ["model.width=6", "model.attention.type=sasa"]
    with pytest.raises(ConfigError) as err:
        load_config("experiments/configs/fgsynth_default.yaml", sasa + ["model.attention.stages=[2, 4]"])
    assert str(err.value).startswith("model.attention.kwargs: sasa: channels (12) must split into 4 heads"), str(err.value)
    load_config("experiments/configs/fgsynth_default.yaml", sasa + ["model.attention.stages=[4]"])
    with pytest.raises(ConfigError, match="channels \\(12\\)"):  # the layers that replace stage 2's convs too
        load_config("experiments/configs/fgsynth_default.yaml", sasa + ["model.attention.stages=[2]",
                                                                        "model.attention.replace_convs=true"])


def test_attention_kwargs_are_checked_without_building_a_module(monkeypatch):
    """Validation reads each block's signature and checks; it constructs no nn.Module (no weights
    drawn, nothing allocated), for every type and for SASA layers in place of convolutions."""
    from torch import nn

    from raccnn.attention import ATTENTION_TYPES, build_attention

    built = []
    init = nn.Module.__init__
    monkeypatch.setattr(nn.Module, "__init__", lambda self, *a, **k: (built.append(type(self)), init(self, *a, **k))[1])
    build_attention("se", 8)
    assert built, "the count sees a module being built"
    built.clear()
    for kind in ATTENTION_TYPES:
        resolve_config({"model": {"attention": {"type": kind, "stages": [] if kind == "none" else [3, 4]}}})
    resolve_config({"model": {"attention": {"type": "sasa", "stages": [4], "replace_convs": True,
                                            "kwargs": {"heads": 2, "kernel_size": 3}}}})
    with pytest.raises(ConfigError, match="must split into 4 heads"):
        resolve_config({"model": {"width": 6, "attention": {"type": "sasa", "stages": [2]}}})
    assert built == []


@pytest.mark.parametrize("kind, kwargs, expected", [
    ("se", "{reduction: 0}", "attention type 'se': reduction: 0 is below the minimum 1"),
    ("bam", "{dilation: 0}", "attention type 'bam': dilation: 0 is below the minimum 1"),
    ("nonlocal", "{sub_sample: 1}", "attention type 'nonlocal': sub_sample: expected bool, got int 1"),
    ("eca", "{gamma: 0}", "eca: gamma must not be 0"),
    ("cbam", "{kernel_size: 4}", "cbam: kernel_size must be odd, got 4"),
])
def test_attention_kwargs_a_block_would_fail_on_are_refused(kind, kwargs, expected):
    """Values that would stop the run later (a division by zero while building, a shape mismatch in
    the first forward pass), and a bool given as a number, are one ConfigError naming the key
    before anything is built."""
    with pytest.raises(ConfigError) as err:
        load_config("experiments/configs/fgsynth_default.yaml", [f"model.attention.type={kind}",
                                                                 "model.attention.stages=[4]",
                                                                 f"model.attention.kwargs={kwargs}"])
    assert str(err.value).startswith(f"model.attention.kwargs: {expected}"), str(err.value)


def test_the_smallest_accepted_fgsynth_opens_every_split(tmp_path):
    from raccnn.data.build import build_datasets

    s = SCHEMA["data"]["synth"]
    cfg = load_config("experiments/configs/fgsynth_default.yaml", [
        f"data.root={tmp_path}", f"data.synth.classes={s['classes'].min}",
        f"data.synth.images_per_class={s['images_per_class'].min}", f"data.synth.size={s['size'].min}",
        "data.resize=96", "data.crop=96", "data.val_fraction=0.01", "data.synth.check=false"])
    data = build_datasets(cfg)
    assert all(len(data[split]) > 0 for split in ("train", "val", "test"))
    with pytest.raises(ValueError, match="images_per_class"):  # the generator's limit is the same number
        from raccnn.data.synthetic import generate_fgsynth
        generate_fgsynth(tmp_path / "less", classes=2, images_per_class=s["images_per_class"].min - 1, size=96)


def test_names_and_defaults_come_from_where_they_live():
    from raccnn.models import APN, BACKBONES, GRAD_MODES, PROPOSERS
    from raccnn.models.proposers import CenterProposer, HeatmapProposer, OracleProposer

    m = SCHEMA["model"]
    assert m["proposer"].choices == list(PROPOSERS) and m["crop"]["grad"].choices is GRAD_MODES
    assert [m["proposer_cfg"][k].default for k in ("center_tl", "heatmap_threshold", "oracle_margin")] == [
        CenterProposer().tl, HeatmapProposer().threshold, OracleProposer().margin]
    apn = APN(8)
    assert (m["apn"]["tl_min"].default, m["apn"]["tl_max"].default) == (apn.tl_min, apn.tl_max)
    assert all(load_config("experiments/configs/fgsynth_default.yaml", [f"model.backbone={b}"]) for b in BACKBONES)
