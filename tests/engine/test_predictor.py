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

from detr_ext.checkpoint import CheckpointMismatchError
from detr_ext.engine.checks import NumClassesError
from detr_ext.engine.predictor import (
    Predictor,
    contiguous_to_dataset_ids,
    draw_predictions,
    instances_to_dicts,
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
