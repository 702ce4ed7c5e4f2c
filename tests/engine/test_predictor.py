"""detr_ext.engine.predictor: Predictor on the DETR shapes model with random weights from a
checkpoint file, draw_predictions, instances_to_dicts; checkpoints and configs that do not fit
are errors."""

from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import Metadata
from detectron2.data import transforms as T
from detectron2.structures import Boxes, Instances
from PIL import Image

from detr_ext.checkpoint import CheckpointMismatchError
from detr_ext.data import DetrDatasetMapper
from detr_ext.engine.checks import NumClassesError
from detr_ext.engine.predictor import (
    Predictor,
    contiguous_to_dataset_ids,
    draw_predictions,
    instances_to_dicts,
    mapper_image_options,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = REPO_ROOT / "projects" / "detr" / "configs" / "detr_shapes.py"
TEST_SHORT_EDGE, MAX_SIZE = 288, 400  # detr_shapes.py's test-time resize


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A randomly initialised detr_shapes model saved as a checkpoint file."""
    torch.manual_seed(0)
    model = instantiate(LazyConfig.load(str(CONFIG)).model)
    path = tmp_path_factory.mktemp("predictor") / "random_detr_shapes.pth"
    state = model.state_dict()
    torch.save({"model": state}, path)
    return path, state


@pytest.fixture(scope="module")
def predictor(checkpoint) -> Predictor:
    return Predictor(str(CONFIG), checkpoint[0], device="cpu")


def test_predictor_loads_the_checkpoint_and_config(predictor, checkpoint):
    _, saved = checkpoint
    loaded = predictor.model.state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in saved.items())
    assert not predictor.model.training
    assert predictor.input_format == "RGB"
    assert list(predictor.metadata.thing_classes) == ["circle", "square", "triangle"]


def test_predictor_returns_instances_at_the_image_size(predictor):
    height, width = 90, 130
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    network_sizes = []
    hook = predictor.model.register_forward_pre_hook(
        lambda _, inputs: network_sizes.append(tuple(inputs[0][0]["image"].shape))
    )
    try:
        instances = predictor(image)
    finally:
        hook.remove()

    assert isinstance(instances, Instances)
    assert instances.image_size == (height, width)
    assert len(instances) == predictor.model.num_queries
    boxes = instances.pred_boxes.tensor
    assert boxes.device.type == "cpu"
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= width).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= height).all()
    assert ((instances.scores >= 0) & (instances.scores <= 1)).all()
    # The config's test-time resize was applied before the network.
    expected = T.ResizeShortestEdge.get_output_shape(height, width, TEST_SHORT_EDGE, MAX_SIZE)
    assert network_sizes == [(3, *expected)]


@pytest.mark.parametrize("shape", [(2, 2000), (2000, 2)])
def test_predictor_runs_on_an_image_whose_resize_rounds_a_side_to_zero(predictor, shape):
    """detr_shapes' test resize (288, max 400) makes 2 px of 2000 px 0.4 px, which rounds to 0;
    that side becomes 1 px instead of PIL failing with "height and width must be > 0"."""
    height, width = shape
    assert 0 in T.ResizeShortestEdge.get_output_shape(height, width, TEST_SHORT_EDGE, MAX_SIZE)
    image = np.full((height, width, 3), 90, dtype=np.uint8)
    instances = predictor(image)
    assert instances.image_size == shape
    assert len(instances) == predictor.model.num_queries
    assert torch.isfinite(instances.pred_boxes.tensor).all()


def test_predictor_rejects_bad_inputs(predictor, tmp_path):
    with pytest.raises(ValueError, match=r"expected an image array of shape \[H, W, 3\]"):
        predictor(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="expected a uint8 image, got dtype float32"):
        predictor(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"expected an image of at least 1 x 1 px, got shape"):
        predictor(np.zeros((0, 10, 3), dtype=np.uint8))
    missing = tmp_path / "missing.pth"
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        Predictor(predictor.cfg, missing, device="cpu")


def test_draw_predictions_keeps_the_image_size(predictor):
    image = np.full((70, 110, 3), 128, dtype=np.uint8)
    instances = predictor(image)
    drawn = draw_predictions(image, instances, predictor.metadata, threshold=0.0)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert not np.array_equal(drawn, image)  # boxes and labels were drawn

    nothing = draw_predictions(image, instances, predictor.metadata, threshold=1.1)
    assert nothing.shape == image.shape
    assert np.abs(nothing.astype(int) - image).max() <= 1  # only rendering round-off


def test_instances_to_dicts_maps_back_to_dataset_ids():
    metadata = Metadata(
        thing_classes=["circle", "square", "triangle"],
        thing_dataset_id_to_contiguous_id={3: 0, 7: 1, 11: 2},
    )
    assert contiguous_to_dataset_ids(metadata) == {0: 3, 1: 7, 2: 11}
    instances = Instances((50, 60))
    instances.pred_boxes = Boxes(torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.5, 8.25]]))
    instances.scores = torch.tensor([0.25, 0.75])
    instances.pred_classes = torch.tensor([2, 1])

    detections = instances_to_dicts(instances, metadata, threshold=0.1)
    assert detections == [
        {"bbox_xyxy": [5.0, 6.0, 7.5, 8.25], "score": 0.75, "category_id": 7,
         "category_name": "square"},
        {"bbox_xyxy": [1.0, 2.0, 3.0, 4.0], "score": 0.25, "category_id": 11,
         "category_name": "triangle"},
    ]  # fmt: skip
    assert [d["score"] for d in instances_to_dicts(instances, metadata, threshold=0.5)] == [0.75]
    plain = instances_to_dicts(instances)
    assert [(d["category_id"], d["category_name"]) for d in plain] == [(1, None), (2, None)]


def test_instances_to_dicts_gives_extra_classes_no_category_id():
    """A model with more classes than the dataset: class 3 is no category of ids {1, 3, 7};
    its index must not pass for category 3."""
    metadata = Metadata(
        thing_classes=["a", "b", "c"], thing_dataset_id_to_contiguous_id={1: 0, 3: 1, 7: 2}
    )
    instances = Instances((50, 60))
    instances.pred_boxes = Boxes(torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]))
    instances.scores = torch.tensor([0.9, 0.8])
    instances.pred_classes = torch.tensor([3, 1])
    detections = instances_to_dicts(instances, metadata)
    assert [(d["category_id"], d["category_name"]) for d in detections] == [
        (None, None),
        (3, "b"),
    ]


def test_instances_to_dicts_names_the_phrases_of_a_prompt():
    metadata = Metadata(
        thing_classes=["circle", "square", "triangle"],
        thing_dataset_id_to_contiguous_id={3: 0, 7: 1, 11: 2},
    )
    instances = Instances((50, 60))
    instances.pred_boxes = Boxes(torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.5, 8.25]]))
    instances.scores = torch.tensor([0.25, 0.75])
    instances.pred_classes = torch.tensor([0, 1])
    # Default prompt (the category names): dataset ids and names as for any detector.
    default = instances_to_dicts(instances, metadata, phrases=["circle", "square", "triangle"])
    assert [(d["category_id"], d["category_name"], d["phrase"]) for d in default] == [
        (7, "square", "square"),
        (3, "circle", "circle"),
    ]
    # A custom prompt: class index 1 is the phrase "triangle", not the category "square".
    custom = instances_to_dicts(instances, metadata, phrases=["red circle", "triangle"])
    assert [(d["category_id"], d["category_name"], d["phrase"]) for d in custom] == [
        (None, None, "triangle"),
        (None, None, "red circle"),
    ]
    with pytest.raises(ValueError, match=r"expected a phrase index in \[0, 1\)"):
        instances_to_dicts(instances, metadata, phrases=["red circle"])


def test_a_prompt_for_a_model_without_prompts_is_refused(predictor):
    with pytest.raises(ValueError, match="does not read text prompts"):
        predictor.predict(np.zeros((20, 20, 3), dtype=np.uint8), prompt="circle")
    instances, phrases = predictor.predict(np.zeros((20, 20, 3), dtype=np.uint8))
    assert phrases is None and len(instances) > 0


@pytest.mark.parametrize(
    "config, head_key",
    [
        (CONFIG, "class_embed.weight"),
        (REPO_ROOT / "projects" / "dino" / "configs" / "dino_shapes.py", "class_embed.0.weight"),
    ],
)
def test_predictor_rejects_a_checkpoint_with_another_class_head(config, head_key, tmp_path):
    """Trained with num_classes=5, loaded with the config's 3: an error naming the keys and
    both shapes, not detectron2's warning and a randomly initialised head."""
    cfg = LazyConfig.load(str(config))
    cfg.model.num_classes = 5
    five_classes = instantiate(cfg.model).state_dict()
    path = tmp_path / "five_classes.pth"
    torch.save({"model": five_classes}, path)
    three_classes = instantiate(LazyConfig.load(str(config)).model).state_dict()

    with pytest.raises(CheckpointMismatchError) as info:
        Predictor(str(config), path, device="cpu")
    message = str(info.value)
    theirs, ours = list(five_classes[head_key].shape), list(three_classes[head_key].shape)
    assert theirs != ours
    assert f"{head_key}: {theirs} vs {ours}" in message
    assert "model.num_classes" in message and "num_classes=3" in message
    assert str(path) in message


def test_predictor_checks_num_classes_against_the_dataset(tmp_path):
    cfg = LazyConfig.load(str(CONFIG))
    cfg.model.num_classes = 2  # the weights fit the model, but shapes has 3 categories
    path = tmp_path / "two_classes.pth"
    torch.save({"model": instantiate(cfg.model).state_dict()}, path)
    with pytest.raises(
        NumClassesError, match=r"model\.num_classes=2 .* 3 categories .*'shapes_val'"
    ):
        Predictor(cfg, path, device="cpu")


def test_predictor_rejects_weights_of_another_model(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model": {"encoder.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(CheckpointMismatchError, match="has none of the model's parameter names"):
        Predictor(str(CONFIG), path, device="cpu")


def test_predictor_rejects_weights_lacking_part_of_the_model(tmp_path):
    """A checkpoint without the class head (e.g. a model saved before a head was added, or
    another variant): an error naming the missing tensors, not detectron2's warning and a
    randomly initialised head that predicts noise."""
    state = instantiate(LazyConfig.load(str(CONFIG)).model).state_dict()
    del state["class_embed.weight"], state["class_embed.bias"]
    path = tmp_path / "no_head.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointMismatchError) as info:
        Predictor(str(CONFIG), path, device="cpu")
    message = str(info.value)
    assert "lacks 2 of the model's tensors" in message
    assert "class_embed.bias, class_embed.weight (in class_embed)" in message
    assert str(path) in message


STORED_HEIGHT, STORED_WIDTH = 24, 40  # the pixels of write_rotated_photo's file


def write_rotated_photo(path: Path) -> Path:
    """A JPEG of 40 x 24 stored pixels whose EXIF orientation 6 says "turn 90 degrees": a
    viewer (and ``apply_exif_orientation=True``) shows it 24 wide and 40 tall."""
    pixels = np.random.default_rng(1).integers(0, 256, (STORED_HEIGHT, STORED_WIDTH, 3))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels.astype(np.uint8)).save(path, exif=exif)
    return path


class StoredPixelsMapper(DetrDatasetMapper):
    """A project's mapper whose default is ``apply_exif_orientation=False``."""

    def __init__(self, *args, apply_exif_orientation: bool = False, **kwargs) -> None:
        super().__init__(*args, apply_exif_orientation=apply_exif_orientation, **kwargs)


@pytest.mark.parametrize(
    "apply_exif_orientation, expected_size",
    [
        ("unset", (STORED_WIDTH, STORED_HEIGHT)),  # DetrDatasetMapper's default: True
        (True, (STORED_WIDTH, STORED_HEIGHT)),
        (False, (STORED_HEIGHT, STORED_WIDTH)),
        ("mapper default False", (STORED_HEIGHT, STORED_WIDTH)),
    ],
)
def test_predictor_reads_images_as_the_test_mapper_does(
    checkpoint, tmp_path, apply_exif_orientation, expected_size
):
    """The image the model sees is the one the config's test mapper gives it in evaluation:
    with ``apply_exif_orientation=False`` the stored pixels, not the EXIF-rotated ones (which
    the Predictor read whatever the config said), so the boxes are in the frame the
    annotations were made in."""
    cfg = LazyConfig.load(str(CONFIG))
    mapper_node = cfg.dataloader.test.mapper
    if apply_exif_orientation == "mapper default False":
        mapper_node._target_ = StoredPixelsMapper
    elif apply_exif_orientation != "unset":
        mapper_node.apply_exif_orientation = apply_exif_orientation
    path = write_rotated_photo(tmp_path / "photo.jpg")
    predictor = Predictor(cfg, checkpoint[0], device="cpu")
    network_inputs = []
    hook = predictor.model.register_forward_pre_hook(
        lambda _, inputs: network_inputs.append(inputs[0][0]["image"])
    )
    try:
        image = predictor.read_image(path)
        instances = predictor(image)
    finally:
        hook.remove()

    assert image.shape == (*expected_size, 3)
    assert instances.image_size == expected_size
    mapped = instantiate(cfg.dataloader.test.mapper)({"file_name": str(path), "image_id": 0})
    assert (mapped["height"], mapped["width"]) == expected_size
    assert torch.equal(network_inputs[0], mapped["image"])  # the very same network input


def test_mapper_image_options_follow_the_config_then_the_mapper_class():
    cfg = LazyConfig.load(str(CONFIG))
    assert mapper_image_options(cfg) == ("RGB", True)
    cfg.dataloader.train.mapper.apply_exif_orientation = False
    assert mapper_image_options(cfg, split="train") == ("RGB", False)
    cfg.dataloader.test.mapper.apply_exif_orientation = False
    cfg.dataloader.test.mapper.img_format = "BGR"
    assert mapper_image_options(cfg) == ("BGR", False)
    del cfg.dataloader.test.mapper.apply_exif_orientation
    cfg.dataloader.test.mapper._target_ = "tests.engine.test_predictor.StoredPixelsMapper"
    assert mapper_image_options(cfg) == ("BGR", False)
    cfg.dataloader.test.mapper.img_format = "RGBA"
    with pytest.raises(ValueError, match=r"img_format in \('RGB', 'BGR'\), got 'RGBA'"):
        mapper_image_options(cfg)


def test_draw_predictions_names_classes_past_the_dataset_categories():
    """A model with more classes than the dataset has categories (check_num_classes allows
    it) may predict an extra class; the Visualizer looked it up in thing_classes and raised
    an IndexError."""
    metadata = Metadata(
        name="parts", thing_classes=["circle", "square", "triangle"],
        thing_dataset_id_to_contiguous_id={3: 0, 7: 1, 11: 2},
    )  # fmt: skip
    instances = Instances((60, 80))
    instances.pred_boxes = Boxes(torch.tensor([[5.0, 5.0, 40.0, 30.0], [10.0, 20.0, 70.0, 50.0]]))
    instances.scores = torch.tensor([0.9, 0.8])
    instances.pred_classes = torch.tensor([1, 5])
    image = np.full((60, 80, 3), 128, dtype=np.uint8)
    drawn = draw_predictions(image, instances, metadata, threshold=0.0)
    assert drawn.shape == image.shape and not np.array_equal(drawn, image)
    assert list(metadata.thing_classes) == ["circle", "square", "triangle"]  # not modified
