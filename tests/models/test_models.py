"""Model contract: logits shape, TorchScript and torch.export parity at new sizes, configs, pretrained init."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torchvision.models import resnet18

from tpnet.models import build_model
from tpnet.models.dual_branch import DualBranchUNet
from tpnet.models.resnet_unet import ResNetUNet
from tpnet.models.summary import count_flops, count_parameters
from tpnet.models.unet import UNet

CONFIG_DIR = Path(__file__).resolve().parents[2] / "src" / "tpnet" / "configs" / "model"
NUM_CLASSES = 4

# name -> (factory, in_channels); tiny widths keep the whole file fast on one CPU thread.
MODELS = {
    "unet": (lambda: UNet(3, NUM_CLASSES, base_width=4, depth=3), 3),
    "unet_bmode_only": (lambda: UNet(1, NUM_CLASSES, base_width=4, depth=3, norm="group"), 1),
    "unet_transpose": (lambda: UNet(3, NUM_CLASSES, base_width=4, depth=2, upsample="transpose"), 3),
    "resnet18_unet": (lambda: ResNetUNet(3, NUM_CLASSES, encoder="resnet18", decoder_width=4), 3),
    "dual_late": (lambda: DualBranchUNet(3, NUM_CLASSES, base_width=4, depth=3, fusion="late"), 3),
    "dual_early": (
        lambda: DualBranchUNet(3, NUM_CLASSES, base_width=4, depth=3, fusion="early", norm="instance"),
        3,
    ),
}


def make_eval_model(name: str) -> tuple[nn.Module, int]:
    torch.manual_seed(0)
    factory, in_channels = MODELS[name]
    model = factory().eval()
    # Non-trivial BatchNorm statistics, so eval-mode parity checks exercise the running stats too.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model, in_channels


def other_sizes(in_channels: int, multiple: int) -> list[tuple[int, int, int, int]]:
    """Two inputs unlike the export example (batch 2, 2x2 blocks): other batch, height and width."""
    return [(1, in_channels, 2 * multiple, 3 * multiple), (3, in_channels, 3 * multiple, 2 * multiple)]


@pytest.mark.parametrize("name", MODELS)
def test_logits_have_input_size_and_num_classes(name: str) -> None:
    model, in_channels = make_eval_model(name)
    assert isinstance(model.size_multiple, int)
    for height, width in [(64, 64), (96, 128)]:
        assert height % model.size_multiple == 0 and width % model.size_multiple == 0
        with torch.no_grad():
            logits = model(torch.randn(2, in_channels, height, width))
        assert logits.shape == (2, NUM_CLASSES, height, width)
        assert torch.isfinite(logits).all()


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # deprecation notices of script/save/load
@pytest.mark.parametrize("name", MODELS)
def test_torchscript_save_load_matches_eager(name: str, tmp_path: Path) -> None:
    model, in_channels = make_eval_model(name)
    scripted = torch.jit.script(model)
    path = tmp_path / f"{name}.pt"
    torch.jit.save(scripted, str(path))
    loaded = torch.jit.load(str(path))
    assert loaded.size_multiple == model.size_multiple
    for shape in other_sizes(in_channels, model.size_multiple):
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_export_with_dynamic_batch_height_width_matches_eager(name: str) -> None:
    model, in_channels = make_eval_model(name)
    multiple = model.size_multiple
    batch = torch.export.Dim("batch", min=1, max=64)
    # Derived dims keep H and W multiples of size_multiple. torch.export treats a root dim as >= 2,
    # so exported programs accept H, W >= 2 * size_multiple.
    height = torch.export.Dim("h_blocks", min=1, max=64) * multiple
    width = torch.export.Dim("w_blocks", min=1, max=64) * multiple
    example = torch.randn(2, in_channels, 2 * multiple, 2 * multiple)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch, 2: height, 3: width},))
    exported = program.module()
    for shape in other_sizes(in_channels, multiple):
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(exported(x), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("config_path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_build_model_from_every_config(config_path: Path) -> None:
    cfg = OmegaConf.load(config_path)
    assert "in_channels" not in cfg and "num_classes" not in cfg and "name" not in cfg
    if cfg.get("depth", 0) is None:  # null = planned at the start of training (tpnet.planning): plan it here
        with pytest.raises(Exception, match="planned"):  # hydra wraps the ValueError
            build_model(cfg, in_channels=3, num_classes=NUM_CLASSES)
        cfg.depth = 2
    model = build_model(cfg, in_channels=3, num_classes=NUM_CLASSES).eval()
    size = 2 * model.size_multiple
    with torch.no_grad():
        logits = model(torch.randn(1, 3, size, size))
    assert logits.shape == (1, NUM_CLASSES, size, size)


def test_build_model_from_plain_dict_and_b_mode_only() -> None:
    cfg = {"_target_": "tpnet.models.unet.UNet", "base_width": 4, "depth": 2}
    model = build_model(cfg, in_channels=1, num_classes=2)
    assert isinstance(model, UNet) and model.size_multiple == 4
    assert model.encoder.stem[0][0].in_channels == 1


def test_unet_size_multiple_follows_depth() -> None:
    assert UNet(3, 2, base_width=2, depth=2).size_multiple == 4
    assert UNet(3, 2, base_width=2, depth=5).size_multiple == 32
    assert ResNetUNet(3, 2, decoder_width=2).size_multiple == 32


def test_late_fusion_without_elastography_channels_is_rejected() -> None:
    with pytest.raises(ValueError, match="late fusion"):
        DualBranchUNet(1, NUM_CLASSES, base_width=4, depth=2, fusion="late")
    # Early fusion of B-mode only is a plain U-Net and is fine.
    DualBranchUNet(1, NUM_CLASSES, base_width=4, depth=2, fusion="early")


def test_late_fusion_splits_bmode_and_elastography_channels() -> None:
    model = DualBranchUNet(3, NUM_CLASSES, base_width=4, depth=2, fusion="late").eval()
    assert model.encoder.bmode_encoder.stem[0][0].in_channels == 1
    assert model.encoder.elasto_encoder.stem[0][0].in_channels == 2
    x = torch.randn(1, 3, 16, 16)
    changed = x.clone()
    changed[:, 1] += 1.0  # stiffer tissue must change the prediction
    with torch.no_grad():
        assert not torch.allclose(model(x), model(changed))


def test_resnet_pretrained_first_conv_is_rgb_mean(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18_imagenet.pt"
    torch.save(reference, path)

    model = ResNetUNet(2, NUM_CLASSES, encoder="resnet18", pretrained_path=str(path), decoder_width=4)
    rgb_mean = reference["conv1.weight"].mean(dim=1, keepdim=True)
    first_conv = model.stem[0].weight
    assert first_conv.shape == (64, 2, 7, 7)
    torch.testing.assert_close(first_conv, rgb_mean.expand(-1, 2, -1, -1))
    torch.testing.assert_close(model.layer3[0].conv1.weight, reference["layer3.0.conv1.weight"])

    rgb_model = ResNetUNet(3, NUM_CLASSES, pretrained_path=str(path), decoder_width=4)
    torch.testing.assert_close(rgb_model.stem[0].weight, reference["conv1.weight"])


def test_resnet_pretrained_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_weights.pt"
    with pytest.raises(FileNotFoundError, match="no_such_weights.pt"):
        ResNetUNet(3, NUM_CLASSES, pretrained_path=str(missing))

    wrong = tmp_path / "not_a_resnet.pt"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match="not_a_resnet.pt"):
        ResNetUNet(3, NUM_CLASSES, pretrained_path=str(wrong))

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="corrupt.pt"):
        ResNetUNet(3, NUM_CLASSES, pretrained_path=str(corrupt))


def test_count_parameters_and_flops_of_a_single_conv() -> None:
    conv = nn.Conv2d(3, 8, kernel_size=1, bias=False)
    assert count_parameters(conv) == 24
    assert count_flops(conv, (1, 3, 16, 16)) == 2 * 3 * 8 * 16 * 16


def test_count_flops_leaves_model_mode_and_statistics_alone() -> None:
    model = UNet(3, NUM_CLASSES, base_width=4, depth=2).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert count_flops(model, (1, 3, 32, 32)) > 0
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    frozen = sum(p.numel() for p in model.encoder.parameters())
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == count_parameters(model) - frozen


# ---- deep supervision ----------------------------------------------------------------------------------


def test_deep_supervision_gives_coarser_logits_in_training_and_one_tensor_in_eval() -> None:
    torch.manual_seed(0)
    model = UNet(3, NUM_CLASSES, base_width=4, depth=3, deep_supervision=True)
    x = torch.randn(2, 3, 32, 48)
    outputs = model.train()(x)
    assert isinstance(outputs, list)
    # Full resolution, then 1/2 and 1/4; the coarsest decoder level (1/8 here) has no head.
    assert [tuple(o.shape) for o in outputs] == [
        (2, NUM_CLASSES, 32, 48),
        (2, NUM_CLASSES, 16, 24),
        (2, NUM_CLASSES, 8, 12),
    ]
    with torch.no_grad():
        eval_logits = model.eval()(x)
    assert isinstance(eval_logits, torch.Tensor) and eval_logits.shape == (2, NUM_CLASSES, 32, 48)
    # Eval mode is the plain network: the same weights without the auxiliary heads give the same logits.
    plain = UNet(3, NUM_CLASSES, base_width=4, depth=3).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("aux_heads.")})
    with torch.no_grad():
        torch.testing.assert_close(plain(x), eval_logits)


CLASSES = ["background", "active_trp", "latent_trp", "vessel"]


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_deep_supervised_checkpoint_deploys_without_heads_and_exports_to_torchscript(tmp_path: Path) -> None:
    from tpnet.core.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION
    from tpnet.models.from_checkpoint import load_deployable_model

    torch.manual_seed(0)
    model_cfg = {"_target_": "tpnet.models.unet.UNet", "base_width": 4, "depth": 3, "deep_supervision": True}
    trained = build_model(model_cfg, in_channels=3, num_classes=NUM_CLASSES)
    trained.train()(torch.randn(4, 3, 16, 16))  # non-trivial BatchNorm statistics
    assert any(k.startswith("aux_heads.") for k in trained.state_dict())
    state = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model": trained.state_dict(), "epoch": 1,
        "global_step": 1, "best_metric": 0.0, "bad_epochs": 0, "config": {"model": model_cfg},
        "meta": {"encoding": {"channels": ["bmode", "elasto", "elasto_valid"]}, "classes": CLASSES},
    }  # fmt: skip
    torch.save(state, tmp_path / "best.pt")
    deployable, _ = load_deployable_model(tmp_path / "best.pt")
    assert not getattr(deployable, "deep_supervision", True)
    assert not any(k.startswith("aux_heads.") for k in deployable.state_dict())
    scripted = torch.jit.script(deployable)
    torch.jit.save(scripted, str(tmp_path / "model.pt"))
    loaded = torch.jit.load(str(tmp_path / "model.pt"))
    x = torch.randn(1, 3, 24, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trained.eval()(x), atol=1e-5, rtol=1e-5)
