"""``mula import-official`` on files shaped exactly like the authors' checkpoints (random values).

The key list comes from tests/fixtures/official_checkpoint_keys.json (every key of the released
checkpoints with its shape and whether the authors' forward pass uses it).
"""

from __future__ import annotations

import json
import pickle
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from mula_cli.model.official import detect_architecture, load_official_checkpoint
from mula_cli.model.weights import load_weights
from mula_cli.utils.errors import MulaError
from mula_cli.utils.manifests import load_manifest

from conftest import run_cli

FIXTURE = Path(__file__).parent / "fixtures" / "official_checkpoint_keys.json"
PREFIX = "module.front_end_net."
# The authors' loader (utils/joint_transformation.py) stores MPII joint mpi_to_ours[i] in their
# pose channel i; LIP's manifest lists the joints in MPII order.
MPI_TO_AUTHORS = [9, 8, 12, 11, 10, 13, 14, 15, 2, 1, 0, 3, 4, 5, 7, 6]


def official_entries(arch: str) -> list[dict]:
    return json.loads(FIXTURE.read_text())[arch]["state_dict"]


def _alias_of(key: str) -> str | None:
    # `pose_classifier` / `parsing_classifier` of the Hourglass model are the encoders' conv_pred_list.
    for task in ("pose", "parsing"):
        head = f"{PREFIX}{task}_classifier."
        if key.startswith(head) and key[len(head)].isdigit():
            return f"{PREFIX}{task}_encoder.conv_pred_list.{key[len(head) :]}"
    return None


def random_official_state(arch: str, *, with_batch_counts: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for entry in official_entries(arch):
        key, shape = entry["key"], entry["shape"]
        if key.endswith("num_batches_tracked"):
            if with_batch_counts:
                state[key] = torch.tensor(1000, dtype=torch.long)
            continue
        value = torch.randn(shape, generator=g)
        if key.endswith("running_var"):
            value = value.abs() + 0.5
        elif len(shape) == 4:  # conv weights: keep activations finite through the deep stacks
            value = value / (value[0].numel() ** 0.5)
        state[key] = value
    for key in list(state):
        alias = _alias_of(key)
        if alias is not None:
            state[key] = state[alias]  # the authors' files hold the aliased module twice, same values
    return state


def authors_metrics(validations: int, seed: int = 0) -> dict[str, object]:
    """The metric entries of a checkpoint saved after ``validations`` validations, typed as their main.py
    makes them: ``calc_pck_lip_dataset`` returns a (1, 18) float64 array whose last entry is the average;
    ``calc_miou_lip_dataset`` a dict of NumPy float64 scalars and per-class (20,) arrays (NaN for a
    class absent from the validated images); the best scores are NumPy scalars (int 0 before any)."""
    rng = np.random.default_rng(seed)
    pck_all_list, pck_avg_list, miou_all_list = [], [], []
    for _ in range(validations):
        pck_all = rng.uniform(0.0, 100.0, (1, 18))
        pck_all_list.append(pck_all)
        pck_avg_list.append(pck_all[-1][-1])
        per_class_acc, per_class_iou = rng.uniform(0, 1, 20), rng.uniform(0, 1, 20)
        per_class_acc[10] = per_class_iou[10] = np.nan
        miou_all_list.append({
            "pixel_acc": np.float64(rng.uniform()), "per_class_acc": per_class_acc,
            "mean_acc": np.nanmean(per_class_acc), "per_class_iou": per_class_iou,
            "mean_iou": np.nanmean(per_class_iou), "freq_w_iou": np.float64(rng.uniform()),
        })  # fmt: skip
    return {
        "best_pck": max(pck_avg_list, default=0),
        "pck_avg_list": pck_avg_list,
        "pck_all_list": pck_all_list,
        "best_miou": max((m["mean_iou"] for m in miou_all_list), default=0),
        "miou_all_list": miou_all_list,
    }


class _PicklerNaming(pickle._Pickler):
    """Writes NumPy's reconstructors under one module path (``numpy.core`` as NumPy 1 does, or
    ``numpy._core`` as NumPy 2 does), whichever NumPy runs the tests."""

    numpy_module = "numpy._core"

    def save_global(self, obj, name=None):
        if getattr(obj, "__module__", "") in ("numpy.core.multiarray", "numpy._core.multiarray"):
            self.write(pickle.GLOBAL + f"{self.numpy_module}.multiarray\n{obj.__name__}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)


def pickle_module_naming(numpy_module: str) -> types.ModuleType:
    """A stand-in for the ``pickle`` module that torch.save can use (both formats)."""
    pickler = type("Pickler", (_PicklerNaming,), {"numpy_module": numpy_module})
    module = types.ModuleType(f"pickle_as_{numpy_module.replace('.', '_')}")
    module.Pickler = pickler
    module.dump = lambda obj, file, protocol=2: pickler(file, protocol).dump(obj)
    return module


def save_like_the_authors(
    path: Path, state: dict[str, torch.Tensor], *, legacy: bool, numpy_module: str = "numpy._core",
    validations: int = 2, **more: object
) -> Path:
    """``torch.save`` of the dict their main.py writes after a validation (``state_dict`` of the
    DataParallel model, an OrderedDict), in the legacy or the zip format."""
    checkpoint = {"epoch": 250, "state_dict": OrderedDict(state), **authors_metrics(validations), **more}
    torch.save(checkpoint, path, pickle_module=pickle_module_naming(numpy_module),
               _use_new_zipfile_serialization=not legacy)
    return path


def joint_order() -> list[int]:
    """Our pose channel m holds the authors' channel joint_order()[m] (background stays last)."""
    lip = load_manifest("lip")
    assert lip.num_joints == len(MPI_TO_AUTHORS)
    return [MPI_TO_AUTHORS.index(m) for m in range(lip.num_joints)] + [lip.num_joints]


def check_every_used_tensor_landed(
    official: dict[str, torch.Tensor], arch: str, ours: dict[str, torch.Tensor]
) -> None:
    """Each used official tensor equals exactly one of ours (the pose heads / remaps up to the joint
    order), and every learned tensor of ours comes from one official tensor."""
    order = torch.tensor(joint_order())
    index: dict[tuple, list[str]] = {}
    for name, tensor in ours.items():
        if not name.endswith("num_batches_tracked"):
            index.setdefault((tuple(tensor.shape), float(tensor.double().sum())), []).append(name)
    claimed: set[str] = set()
    used = [
        e["key"] for e in official_entries(arch) if e["used"] and not e["key"].endswith("num_batches_tracked")
    ]
    for key in used:
        if _alias_of(key) is not None:
            continue  # same tensor as its conv_pred_list twin
        value = official[key]
        candidates = [value]
        if ("pose_encoder.conv_pred_list" in key) or key.startswith(f"{PREFIX}pose_classifier"):
            candidates = [value[order]]
        if "pose_encoder.conv_remap_list" in key and key.endswith("weight"):
            candidates = [value[:, order]]
        target = candidates[0]
        names = index.get((tuple(target.shape), float(target.double().sum())), [])
        hits = [n for n in names if torch.equal(ours[n], target)]
        assert len(hits) == 1, f"{key}: {hits or 'not found'}"
        claimed.add(hits[0])
    learned = {n for n in ours if not n.endswith("num_batches_tracked")}
    assert claimed == learned, sorted(learned - claimed)[:5]


@pytest.mark.parametrize(
    ("arch", "legacy", "with_batch_counts", "preset"),
    [("hg_1stage", True, False, "hg-1s"), ("vgg16", False, True, "vgg16-fcn-mula")],
)
def test_import_maps_every_used_tensor_and_the_model_runs(
    tmp_path: Path, arch: str, legacy: bool, with_batch_counts: bool, preset: str
) -> None:
    official = random_official_state(arch, with_batch_counts=with_batch_counts)
    checkpoint = save_like_the_authors(tmp_path / "mula_lip.pth.tar", official, legacy=legacy)
    result = run_cli("import-official", checkpoint)
    assert result.exit_code == 0, result.output
    written = tmp_path / "mula_lip.pt"  # default: next to the input
    assert written.is_file() and str(written.name) in result.output.replace("\n", "")
    assert "unused" in result.output and "joint order" in result.output
    model, config, extra = load_weights(written)
    lip = load_manifest("lip")
    assert (config.preset, config.variant, config.joint_names, config.class_names) == (
        preset,
        "mula",
        lip.joints,
        lip.classes,
    )
    assert (config.bgr, config.pixel_mean, config.pixel_std) == (True, (127.5,) * 3, (255.0,) * 3)
    assert extra["official"]["epoch"] == 250
    assert extra["official"]["best_pck"] == pytest.approx(float(authors_metrics(2)["best_pck"]))
    assert json.loads(extra["manifest"])["name"] == "lip"
    check_every_used_tensor_landed(official, arch, model.state_dict())
    with torch.no_grad():
        out = model(torch.randint(0, 256, (1, 3, 128, 128), dtype=torch.uint8))
    assert out.pose[-1].shape == (1, lip.num_joints + 1, 128 // config.stride, 128 // config.stride)
    assert all(torch.isfinite(t).all() for t in out.pose + out.parsing)


def test_hourglass_structure_spot_checks(tmp_path: Path) -> None:
    """Same-shaped tensors could be swapped unnoticed by value matching: pin the ones that matter."""
    official = random_official_state("hg_1stage", with_batch_counts=True, seed=3)
    checkpoint = save_like_the_authors(tmp_path / "hg1.pth.tar", official, legacy=False)
    assert run_cli("import-official", checkpoint, "--out", tmp_path / "out.pt").exit_code == 0
    ours = load_weights(tmp_path / "out.pt")[0].state_dict()
    # The hourglass levels: srb1..srb4 down, srb5 at the bottom, srb6..srb9 back up.
    hg = {"pose": ("pose_encoder.hg_list.0.", "stages.0.pose_features.hourglass."),
          "parsing": ("parsing_encoder.hg_list.0.", "stages.0.parsing_features.hourglass.")}  # fmt: skip
    pairs = {
        hg["pose"][0] + "srb1.0.res_block.2.weight": hg["pose"][1] + "down.0.conv1.weight",
        hg["pose"][0] + "srb4.0.res_block.0.weight": hg["pose"][1] + "down.3.bn1.weight",
        hg["pose"][0] + "srb5.0.res_block.5.weight": hg["pose"][1] + "bottom.conv2.weight",
        hg["pose"][0] + "srb6.0.res_block.8.weight": hg["pose"][1] + "up.0.conv3.weight",
        hg["parsing"][0] + "srb9.0.res_block.6.running_var": hg["parsing"][1] + "up.3.bn3.running_var",
        "pose_encoder.conv1x1_1_list.0.weight": "stages.0.pose_features.conv.weight",
        "pose_encoder.bn.0.running_mean": "stages.0.pose_features.bn.running_mean",
        # k_pose = A_pose(F_parsing): the authors' pose adapter feeds the pose residual.
        "pose_param_adapter_list.0.0.weight": "stages.0.pose_interaction.adapter.conv1.weight",
        "pose_param_adapter_list.0.4.bias": "stages.0.pose_interaction.adapter.conv3.bias",
        "parsing_conv1x1_U_list.0.weight": "stages.0.parsing_interaction.u.weight",
        "parsing_conv1x1_V_list.0.weight": "stages.0.parsing_interaction.v.weight",
        "pose_bn_list.0.weight": "stages.0.pose_interaction.bn.weight",
        "parsing_encoder.res_block.6.weight": "parsing_stem.bottleneck.conv3.weight",
        "pose_encoder.basic_block.3.conv1x1.0.weight": "pose_stem.post_res.skip.conv.weight",
        "pose_encoder.res_pre_act.conv1x1.2.weight": "pose_stem.pre_res.skip.conv.weight",
        "parsing_encoder.conv_pred_list.0.bias": "stages.0.parsing_head.bias",
    }
    for theirs, mine in pairs.items():
        assert torch.equal(official[PREFIX + theirs], ours[mine]), theirs
    # Joint order by name: our "head-top" channel is the authors' channel 0 (their first joint).
    head_top = load_manifest("lip").joints.index("head-top")
    assert torch.equal(
        ours["stages.0.pose_head.weight"][head_top], official[PREFIX + "pose_classifier.0.weight"][0]
    )


def test_five_stage_detection_and_mapping(tmp_path: Path) -> None:
    official = random_official_state("hg_5stage", with_batch_counts=False)
    stripped = {k[len(PREFIX) :]: v for k, v in official.items()}
    arch = detect_architecture(stripped)
    assert (arch.encoder, arch.stages, arch.width, arch.hourglass_depth) == ("hourglass", 5, 256, 4)
    checkpoint = save_like_the_authors(tmp_path / "hg5.pth.tar", official, legacy=False)
    result = run_cli("import-official", checkpoint, "--arch", "hg", "--out", tmp_path / "hg5.pt")
    assert result.exit_code == 0, result.output
    model, config, _ = load_weights(tmp_path / "hg5.pt")
    assert config.preset == "hg-5s" and config.stages == 5
    check_every_used_tensor_landed(official, "hg_5stage", model.state_dict())


def test_a_bare_state_dict_without_prefixes_is_accepted(tmp_path: Path) -> None:
    official = random_official_state("vgg16", with_batch_counts=False)
    bare = {k[len(PREFIX) :]: v for k, v in official.items()}  # no DataParallel / wrapper prefix
    torch.save(bare, tmp_path / "bare.pth")
    result = run_cli("import-official", tmp_path / "bare.pth")
    assert result.exit_code == 0, result.output
    model, config, _ = load_weights(tmp_path / "bare.pt")
    assert config.preset == "vgg16-fcn-mula"
    check_every_used_tensor_landed(official, "vgg16", model.state_dict())


class Intruder:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_unsafe_malformed_and_foreign_files_are_refused(tmp_path: Path, capsys) -> None:
    official = random_official_state("hg_1stage", with_batch_counts=False)
    garbage = tmp_path / "garbage.pth.tar"
    garbage.write_bytes(b"\x80\x02 definitely not a checkpoint")
    evil = save_like_the_authors(tmp_path / "evil.pth.tar", official, legacy=False, intruder=Intruder())
    foreign = tmp_path / "foreign.pth.tar"
    torch.save({"state_dict": {"module.backbone.conv.weight": torch.zeros(3)}}, foreign)
    incomplete_state = dict(official)
    del incomplete_state[PREFIX + "pose_conv1x1_U_list.0.weight"]
    incomplete = save_like_the_authors(tmp_path / "incomplete.pth.tar", incomplete_state, legacy=False)
    extra_state = {**official, PREFIX + "pose_encoder.extra_head.weight": torch.zeros(2)}
    extended = save_like_the_authors(tmp_path / "extended.pth.tar", extra_state, legacy=False)
    cases = {
        garbage: "cannot be loaded",
        evil: "cannot be loaded",
        foreign: "match neither",
        incomplete: "lacks 1 tensors",
        extended: "does not have",
        tmp_path / "missing.pth.tar": "does not exist",
    }
    for path, message in cases.items():
        result = run_cli("import-official", path)
        assert result.exit_code == 2, (path.name, result.output)
        assert message in " ".join(result.output.split()), (path.name, result.output)
        assert "Traceback" not in result.output
    wrong_arch = save_like_the_authors(tmp_path / "hg.pth.tar", official, legacy=False)
    assert run_cli("import-official", wrong_arch, "--arch", "vgg").exit_code == 2
    assert "must never run" not in capsys.readouterr().out
    assert not list(tmp_path.glob("*.pt"))  # nothing written for a refused file


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
@pytest.mark.parametrize("numpy_module", ["numpy.core", "numpy._core"])
def test_numpy_metric_arrays_load_in_both_formats_and_module_names(
    tmp_path: Path, legacy: bool, numpy_module: str
) -> None:
    """What their main.py pickles (arrays in pck_all_list / miou_all_list, NumPy scalars) loads safely
    whether NumPy 1 (numpy.core) or 2 (numpy._core) wrote it, in either torch.save format."""
    state = {f"{PREFIX}pose_encoder.bn.0.running_mean": torch.arange(4.0), f"{PREFIX}x.weight": torch.ones(2, 3)}
    path = save_like_the_authors(tmp_path / "ckpt.pth.tar", state, legacy=legacy, numpy_module=numpy_module)
    assert f"{numpy_module}.multiarray\n_reconstruct".encode() in _pickle_bytes(path, legacy)
    loaded, meta = load_official_checkpoint(path)
    assert sorted(loaded) == ["pose_encoder.bn.0.running_mean", "x.weight"]
    assert torch.equal(loaded["x.weight"], torch.ones(2, 3))
    expected = authors_metrics(2)
    assert meta == {"epoch": 250, "best_pck": pytest.approx(float(expected["best_pck"])),
                    "best_miou": pytest.approx(float(expected["best_miou"]))}  # fmt: skip


def _pickle_bytes(path: Path, legacy: bool) -> bytes:
    if legacy:
        return path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        return archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))


class CallsNumPy:
    """Pickles as a call of a NumPy function that is not a reconstructor."""

    def __reduce__(self):
        return (np.fromfile, ("/etc/hostname",))


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
@pytest.mark.parametrize(
    "payload",
    [
        np.array(["text", 1], dtype=object),  # an object array pickles arbitrary objects
        np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")]),  # a structured dtype
        np.array(["a", "b"]),  # a string dtype
        CallsNumPy(),
        np.random.default_rng(0),  # numpy.random's own pickling functions
    ],
    ids=["object-array", "structured", "strings", "numpy-function", "numpy-generator"],
)
def test_numpy_beyond_numeric_arrays_is_refused(tmp_path: Path, legacy: bool, payload: object) -> None:
    state = {f"{PREFIX}x.weight": torch.ones(2)}
    path = save_like_the_authors(tmp_path / "ckpt.pth.tar", state, legacy=legacy, extra_metric=[payload])
    with pytest.raises(MulaError, match="cannot be loaded safely"):
        load_official_checkpoint(path)


@pytest.mark.slow
def test_predict_on_photos_with_an_imported_checkpoint(tmp_path: Path) -> None:
    """The user's path: the authors' file (NumPy metrics inside) -> import-official -> predict."""
    from PIL import Image

    official = random_official_state("hg_1stage", with_batch_counts=False, seed=5)
    checkpoint = save_like_the_authors(tmp_path / "mula_lip.pth.tar", official, legacy=True,
                                       numpy_module="numpy.core")
    assert run_cli("import-official", checkpoint).exit_code == 0
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)).save(tmp_path / "me.jpg")
    result = run_cli("predict", tmp_path / "me.jpg", "--weights", tmp_path / "mula_lip.pt",
                     "--out", tmp_path / "me.png", "--pose", tmp_path / "me.json", "--vis", tmp_path / "me_vis.jpg")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "me.png").size == (200, 300) and Image.open(tmp_path / "me_vis.jpg").size == (200, 300)
    doc = json.loads((tmp_path / "me.json").read_text())
    assert doc["model"]["preset"] == "hg-1s" and [j["name"] for j in doc["joints"]] == list(load_manifest("lip").joints)
    assert all(np.isfinite([j["x"], j["y"], j["score"]]).all() for j in doc["joints"])
