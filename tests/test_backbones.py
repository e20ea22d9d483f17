"""Today's backbones in RA-CNN: timm's convnets and transformers at the paper's 448 -> 224 -> 224,
their feature maps NCHW, their pretrained weights from a local file, their input normalisation."""
from __future__ import annotations

import pytest
import torch
from conftest import DEFAULT_CONFIG, TINY
from torchvision import models as tvm

from raccnn.config import ConfigError, load_config
from raccnn.data import CUBDataset
from raccnn.data.build import build_datasets, prepare_data
from raccnn.data.device_input import to_model_input
from raccnn.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms
from raccnn.engine.trainer import Trainer
from raccnn.models import RACNN, PretrainedWeightsError, build_backbone
from raccnn.models.backbones import input_normalization

# One member of each family, made small through timm's own arguments where the smallest variant is
# still slow on one CPU thread; (backbone, timm arguments, channels of the last map, its stride).
FAMILIES = {
    "resnet": ("timm:resnet50", {"layers": [1, 1, 1, 1], "base_width": 16}, 2048, 32),
    "convnext": ("timm:convnext_atto", {"depths": [1, 1, 1, 1]}, 320, 32),
    "swin": ("timm:swin_tiny_patch4_window7_224", {"depths": [1, 1, 1, 1], "embed_dim": 16, "num_heads": [1, 1, 2, 4]},
             128, 32),
    "vit": ("timm:vit_tiny_patch16_224", {"depth": 1}, 192, 16),
}
PAPER_SIZES = [448, 224, 224]
# every phase for one step: two images per split, batches of two, one round of one epoch per phase
ONE_STEP = ["data.max_images=2", "data.batch_size=2", "data.eval_batch_size=2", "train.alternate.rounds=1",
            "train.alternate.cls.max_epochs=1", "train.alternate.apn.max_epochs=1", "model.input_sizes=[448,224,224]"]


def family_opts(family: str) -> list[str]:
    name, kwargs, _, _ = FAMILIES[family]
    return [f"model.backbone={name}", f"model.backbone_kwargs={kwargs}"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fgsynth"))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_trains_every_phase_at_the_papers_sizes(family, data_root, tmp_path):
    cfg = load_config(DEFAULT_CONFIG, TINY + ONE_STEP + family_opts(family) + [f"data.root={data_root}",
                                                                             f"work_dir={tmp_path}"])
    trainer = Trainer(cfg, build_datasets(cfg), str(tmp_path))
    before = [p.detach().clone() for p in trainer.model.scales.parameters()]
    trainer.run()
    phases = [h["phase"] for h in trainer.progress.history]
    assert phases == ["pretrain_cls", "init_apn", "alternate_cls[round 1]", "alternate_apn[round 1]", "fusion"]
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.scales.parameters()))
    assert (tmp_path / "best.pt").exists()


def reference_map(body, x: torch.Tensor) -> torch.Tensor:
    """The last feature map from timm's ``forward_features`` (the model's own layout) put in NCHW
    here: channels-last maps permuted, ViT's tokens without the prefix ones laid on the patch grid."""
    feats = body.forward_features(x)
    if feats.dim() == 3:
        h, w = (s // body.patch_embed.patch_size[0] for s in x.shape[-2:])
        return feats[:, body.num_prefix_tokens:].reshape(len(x), h, w, -1).permute(0, 3, 1, 2)
    return feats.permute(0, 3, 1, 2) if getattr(body, "output_fmt", "NCHW") == "NHWC" else feats


@pytest.mark.parametrize("family", FAMILIES)
def test_feature_maps_are_nchw_with_the_backbones_channels(family):
    name, kwargs, channels, stride = FAMILIES[family]
    model = RACNN(3, backbone=name, input_sizes=PAPER_SIZES, backbone_kwargs=kwargs, apn={"hidden": 8, "pool_size": 2})
    model.eval()  # Swin drops paths at random in training
    assert model.scales[0].backbone.out_channels == channels
    with torch.no_grad():
        out = model(torch.rand(1, 3, 448, 448), return_crops=True)
        for s, size in enumerate(PAPER_SIZES):
            assert out.maps[s].shape == (1, channels, size // stride, size // stride)
            torch.testing.assert_close(out.maps[s], reference_map(model.scales[s].backbone.body, out.crops[s]))


def test_swin_is_built_for_each_scales_size_with_the_same_weights():
    name, kwargs, _, _ = FAMILIES["swin"]
    model = RACNN(3, backbone=name, input_sizes=PAPER_SIZES, backbone_kwargs=kwargs)
    trunks = [net.backbone for net in model.scales]
    assert [t.body.patch_embed.img_size for t in trunks] == [(448, 448), (224, 224), (224, 224)]
    first = trunks[0].state_dict()
    for t in trunks[1:]:
        assert all(torch.equal(first[k], v) for k, v in t.state_dict().items())
    # at 96 px the last stages' windows shrink to the map (6 and 3), so the weights cannot be shared
    with pytest.raises(ConfigError, match="model.input_sizes: .* different shapes"):
        RACNN(3, backbone=name, input_sizes=[448, 96], n_scales=2, backbone_kwargs=kwargs)


def test_torchvision_and_timm_weights_load_from_a_local_file(tmp_path):
    path = tmp_path / "resnet50-torchvision.pth"
    state = tvm.resnet50(weights=None).state_dict()
    torch.save(state, path)
    model = RACNN(3, backbone="timm:resnet50", pretrained=str(path), input_sizes=PAPER_SIZES)
    for net in model.scales:
        own = net.backbone.body.state_dict()
        assert all(torch.equal(own[k], v) for k, v in state.items() if not k.startswith("fc."))
    # a swin state dict as timm writes it (safetensors), read into the scales built for 448 and 224
    name, kwargs, _, _ = FAMILIES["swin"]
    import timm
    from safetensors.torch import save_file

    swin = timm.create_model(name[len("timm:"):], **kwargs).state_dict()
    save_file(swin, tmp_path / "swin.safetensors")
    model = RACNN(3, backbone=name, pretrained=str(tmp_path / "swin.safetensors"), input_sizes=PAPER_SIZES,
                  backbone_kwargs=kwargs)
    for net in model.scales:
        own = net.backbone.body.state_dict()
        assert all(torch.equal(own[k], swin[k]) for k in own)

    with pytest.raises(PretrainedWeightsError, match="does not match timm:resnet50; shapes"):
        torch.save(tvm.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
        build_backbone("timm:resnet50", pretrained=str(tmp_path / "r18.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    with pytest.raises(PretrainedWeightsError, match="junk.pth: not a readable state dict"):
        build_backbone("timm:resnet50", pretrained=str(tmp_path / "junk.pth"))
    with pytest.raises(PretrainedWeightsError, match="no such file"):
        build_backbone("timm:resnet50", pretrained=str(tmp_path / "absent.pth"))
    with pytest.raises(PretrainedWeightsError, match="never downloads.*huggingface.co/timm/resnet50"):
        build_backbone("timm:resnet50", pretrained=True)


def test_normalisation_follows_the_backbone_unless_the_config_sets_it(data_root, tmp_path):
    def first_test_image(*opts):  # the model's input, normalised on the device as the config says
        cfg = load_config(DEFAULT_CONFIG, TINY + [f"data.root={data_root}", f"work_dir={tmp_path}", *opts])
        image = build_datasets(cfg, splits=("test",))["test"][0]["image"]
        return to_model_input(image[None], "cpu", input_normalization(cfg))[0]

    def pixels(image, mean, std):  # back to [0, 1]
        return image * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)

    default = first_test_image()  # vgg_small: ImageNet's statistics, as always
    raw = pixels(default, IMAGENET_MEAN, IMAGENET_STD)
    vit = first_test_image("model.backbone=timm:vit_tiny_patch16_224")  # pretrained with mean = std = 0.5
    torch.testing.assert_close(vit, (raw - 0.5) / 0.5)
    resnet = first_test_image("model.backbone=timm:resnet50")  # ImageNet's, from timm's config
    torch.testing.assert_close(resnet, default)
    mine = first_test_image("model.backbone=timm:vit_tiny_patch16_224", "data.mean=[0.1,0.2,0.3]", "data.std=[1,2,4]")
    torch.testing.assert_close(pixels(mine, (0.1, 0.2, 0.3), (1.0, 2.0, 4.0)), raw)
    # the FG-Synth default: exactly the tensors of the ImageNet pipeline normalising each image
    cfg = load_config(DEFAULT_CONFIG, TINY + [f"data.root={data_root}"])
    imagenet = CUBDataset(prepare_data(cfg), split="test", transform=build_transforms(False, 96, 96, output="float"))
    assert torch.equal(default, imagenet[0]["image"])


def test_config_names_timm_models_and_their_arguments():
    with pytest.raises(ConfigError, match="timm has no model 'resnet5O'.*did you mean 'timm:resnet50'"):
        load_config(DEFAULT_CONFIG, ["model.backbone=timm:resnet5O"])
    with pytest.raises(ConfigError, match="model.backbone_kwargs: only timm backbones"):
        load_config(DEFAULT_CONFIG, ["model.backbone_kwargs={depth: 2}"])
    with pytest.raises(ConfigError, match=r"model.backbone_kwargs \{'dept': 2\}: timm:vit_tiny_patch16_224 does not"):
        build_backbone("timm:vit_tiny_patch16_224", kwargs={"dept": 2})
    with pytest.raises(ConfigError, match=r"data.std: \[0.5, 0, 0.5\]: every entry must be > 0"):
        load_config(DEFAULT_CONFIG, ["data.std=[0.5,0,0.5]"])


def test_crop_panels_undo_the_models_normalisation():
    """The pictures show the pixels the images came from, whatever the backbone's statistics."""
    from raccnn.engine.visualize import model_panel

    raw = torch.rand(1, 3, 32, 32)
    half = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    model = RACNN(3, backbone="vgg_small", width=4, input_sizes=(32, 32, 32), normalization=half)
    assert RACNN(3, backbone="timm:vit_tiny_patch16_224", backbone_kwargs={"depth": 1},
                 input_sizes=(32, 32, 32)).input_normalization == half  # the backbone's, by default
    panel = model_panel(model, {"image": (raw - 0.5) / 0.5})
    corner = panel[:, 2:7, 2:7]  # make_grid's padding of 2; the squares drawn on the tile start further in
    assert (corner.int() - (raw[0, :, :5, :5] * 255).round().int()).abs().max() <= 1


@pytest.mark.parametrize("config, backbone", [("cub200_resnet50", "timm:resnet50"),
                                              ("cub200_swin_tiny", "timm:swin_tiny_patch4_window7_224")])
def test_cub_configs_change_only_the_backbone_of_the_papers(config, backbone):
    paper = load_config("experiments/configs/cub200_vgg19.yaml")
    cfg = load_config(f"experiments/configs/{config}.yaml")
    assert cfg["model"]["backbone"] == backbone and cfg["model"]["pretrained"].endswith(".safetensors")
    for section in ("data", "train"):
        assert cfg[section] == paper[section]
    assert {k: v for k, v in cfg["model"].items() if k not in ("backbone", "pretrained")} == \
        {k: v for k, v in paper["model"].items() if k not in ("backbone", "pretrained")}


def test_checkpoints_of_the_features_only_trunk_still_load():
    """The earlier trunk was timm's features_only model, which renames ConvNeXt's stages.0 stages_0."""
    import timm

    features_only = timm.create_model("convnext_atto", features_only=True, out_indices=(-1,))
    old = {f"body.{k}": v for k, v in features_only.state_dict().items()}
    assert any(k.startswith("body.stages_0.") for k in old)
    trunk = build_backbone("timm:convnext_atto")
    trunk.load_state_dict(old)
    assert torch.equal(trunk.body.stages[0].blocks[0].conv_dw.weight, old["body.stages_0.blocks.0.conv_dw.weight"])
