"""train.method=icmoe / model.arch=icmoe: the frozen network stays frozen,
the experts' contract, pretraining a backbone when none is given, errors."""
import json
from pathlib import Path

import pytest
import torch

from semimoe import train as T
from semimoe.config import ConfigError, make_config
from semimoe.models import ModelConfig, build_model, load_checkpoint
from semimoe.models.icmoe import ICMOE_EXPERTS, state_hash

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 4 GlaS-like training images per domain and 1 test image, a 4-wide 3-level network
TINY = [
    "model.base_width=4", "model.depth=3", "model.embed_dim=8", "data.synthetic_train=4", "data.synthetic_test=1",
    "data.val_ratio=0.25", "data.label_ratio=0.5", "train.iterations=4", "train.val_every=2", "train.crop=32",
    "train.batch_labeled=2", "train.batch_unlabeled=2", "train.log_every=1", "train.overlays=0",
    "train.progress=false", "train.threads=1", "train.time_limit=0", "icmoe.pretrain_iterations=3",
    "icmoe.samples=8",
]


def _cfg(tmp, *extra, name="run"):
    return make_config("icmoe-demo", overrides=TINY + [f"data.synthetic_cache={tmp / 'cache'}",
                                                        f"run_dir={tmp / name}", *extra])


def _quiet(*a, **k):
    pass


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One icmoe run that pretrains its own backbone (domain a) and adapts it (domain b)."""
    tmp = tmp_path_factory.mktemp("icmoe")
    lines = []
    res = T.train(_cfg(tmp), log=lines.append)
    return tmp, res, lines


def test_frozen_network_is_unchanged(run):
    tmp, res, lines = run
    folder = Path(res["run_dir"])
    pre = torch.load(folder / "backbone" / "best.pt", weights_only=True)
    assert pre["model_config"]["arch"] == "semimoe"
    assert json.loads((folder / "backbone" / "split.json").read_text())  # a run of its own
    for name in ("best.pt", "last.pt"):
        ck = torch.load(folder / name, weights_only=True)
        assert ck["model_config"]["arch"] == "icmoe"
        bb = {k[len("backbone."):]: v for k, v in ck["model"].items() if k.startswith("backbone.")}
        assert bb.keys() == pre["model"].keys()
        for k, v in pre["model"].items():
            assert torch.equal(bb[k], v), (name, k)
    ic = res["icmoe"]
    assert ic["backbone_unchanged"] is True and ic["backbone"] == str(folder / "backbone" / "best.pt")
    assert 0 < ic["trained_parameters"] < ic["frozen_parameters"]
    # the report says the frozen network's Dice and the experts'
    assert 0.0 <= ic["frozen_test"]["dice_pooled"] <= 1.0
    assert any("frozen network alone" in ln for ln in lines)


def test_state_hash_sees_any_change():
    m = build_model(ModelConfig(base_width=4, depth=3))
    h = state_hash(m)
    assert h == state_hash(m) and len(h) == 64
    with torch.no_grad():
        next(m.parameters()).view(-1)[0] += 1e-7
    assert state_hash(m) != h


def test_adaptive_expert_starts_as_the_basic_one_and_the_contract(run):
    tmp, res, _ = run
    pre = torch.load(Path(res["run_dir"]) / "backbone" / "best.pt", weights_only=True)
    model = build_model(ModelConfig(arch="icmoe", base_width=4, depth=3, gate="spatial", embed_dim=8))
    model.load_backbone(pre["model"])
    model.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x)
    assert out.probs.shape == (2, len(ICMOE_EXPERTS), 2, 32, 32) and out.embed.shape == (2, 8, 8, 8)
    torch.testing.assert_close(out.probs[:, 0], out.probs[:, 2], rtol=0, atol=1e-6)  # zero-initialised adapters
    # the frozen network alone is the plain Semi-MoE with the checkpoint's weights
    plain = build_model(ModelConfig(base_width=4, depth=3, gate="spatial"))
    plain.load_state_dict(pre["model"])
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(out.probs[:, 0], torch.softmax(plain(x).seg, 1), rtol=0, atol=1e-6)
    # predictor: voted probabilities + boundary; the voted ones sum to 1
    with torch.no_grad():
        p = model.predictor()(x)
    assert p.shape == (2, 3, 32, 32)
    torch.testing.assert_close(p[:, :2].sum(1), torch.ones(2, 32, 32), rtol=0, atol=1e-5)
    torch.testing.assert_close(p[:, :2], out.fused)


def test_best_pt_loads_and_predicts_like_the_trained_model(run):
    tmp, res, _ = run
    model, meta = load_checkpoint(Path(res["run_dir"]) / "best.pt")
    assert type(model).__name__ == "ICMoE" and not model.backbone.training
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = model.predictor()(x)
        b = model.predictor()(x)
    assert torch.equal(a, b)


def test_resume_reuses_the_pretrained_backbone(run, tmp_path):
    tmp, res, _ = run
    lines = []
    res2 = T.train(_cfg(tmp, "train.iterations=6"), resume=True, log=lines.append)
    assert any("reusing the pretrained network" in ln for ln in lines)
    assert res2["icmoe"]["backbone_sha256"] == res["icmoe"]["backbone_sha256"]


def test_config_errors_name_what_is_needed(run, tmp_path):
    tmp, res, _ = run
    bb = str(Path(res["run_dir"]) / "backbone" / "best.pt")
    with pytest.raises(ConfigError, match="model.arch=icmoe"):
        T.train(_cfg(tmp_path, "model.arch=semimoe", f"icmoe.backbone={bb}"), log=_quiet)
    with pytest.raises(ConfigError, match="base_width"):
        T.train(_cfg(tmp_path, "model.base_width=8", f"icmoe.backbone={bb}", name="r2"), log=_quiet)
    with pytest.raises(ConfigError, match="icmoe.backbone"):
        T.train(_cfg(tmp_path, "data.kind=synthetic", "data.synthetic_side=64", "data.mpp=null", name="r3"),
                log=_quiet)
    with pytest.raises(ConfigError, match="icmoe.temperature"):
        _cfg(tmp_path, "icmoe.temperature=0")


def test_onnx_export_matches_onnxruntime(run, tmp_path):
    """The experts, the vote and the frozen network export as one graph (the
    reference fusion path), checked by onnxruntime against PyTorch."""
    pytest.importorskip("onnxruntime")
    from semimoe.data.scale import InputSpec
    from semimoe.export import export_onnx

    _, res, _ = run
    model, meta = load_checkpoint(Path(res["run_dir"]) / "best.pt")
    model.set_fusion("reference")
    out = export_onnx(model, tmp_path / "m.onnx", spec=InputSpec.from_meta(meta), tile=32, dynamic_spatial=False,
                      log=lambda *a: None)
    assert out["verified"]["max_abs_diff"] <= 1e-4
