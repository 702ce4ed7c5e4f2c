"""Grounding DINO's category names: checked when the model is built, against the training
set before the first step, and replaced by the test set's own names for evaluation
(``detr_ext.engine.prompted``)."""

from __future__ import annotations

import pytest
import torch
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from omegaconf import OmegaConf

from detr_ext.engine.checks import CategoryMismatchError, check_num_classes
from detr_ext.engine.prompted import (
    check_training_category_names,
    evaluation_category_names,
    text_prompted_model,
)
from detr_ext.modeling.language import num_prompt_tokens
from tests.projects.test_grounding_dino import batch, tiny_model_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return instantiate(tiny_model_config().model)  # circle, square, triangle


def register(name: str, thing_classes: list[str] | None) -> str:
    """A dataset with these categories in its metadata (nothing else is read here)."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, list)
    if thing_classes is not None:
        MetadataCatalog.get(name).set(thing_classes=thing_classes)
    return name


def config(train: list[str], test: list[str]):
    return OmegaConf.create(
        {
            "dataloader": {
                "train": {"dataset": {"names": train}},
                "test": {"dataset": {"names": test}},
            }
        }
    )


def test_a_single_name_or_a_name_with_a_dot_is_refused_naming_the_key():
    cfg = tiny_model_config()
    cfg.model.category_names = "circle"  # was split into c . i . r . c . l . e
    with pytest.raises(TypeError, match=r"model.category_names as a list of names.*got str"):
        instantiate(cfg.model)
    cfg.model.category_names = ["nut", "3.5 mm screw"]
    with pytest.raises(ValueError, match=r"(?s)model.category_names.*'3.5 mm screw'.*rename"):
        instantiate(cfg.model)


def test_set_category_names_changes_the_default_prompt_and_the_class_count(model):
    names = list(model.category_names)
    try:
        model.set_category_names(["nut", "bolt", "screw", "washer"])
        assert model.default_prompt == "nut . bolt . screw . washer ."
        assert model.num_classes == 4
    finally:
        model.set_category_names(names)
    assert model.default_prompt == "circle . square . triangle ." and model.num_classes == 3


def test_default_prompt_longer_than_the_text_encoder_fails_at_the_first_step():
    """An image whose boxes were all in the first categories trained on; the error came at the
    first image with a late category, hours in, without naming the config key."""
    cfg = tiny_model_config()
    cfg.model.text_encoder.max_text_len = 8
    cfg.model.category_names = [f"machine part number {i}" for i in range(6)]
    model = instantiate(cfg.model).train()
    with pytest.raises(
        ValueError,
        match=r"(?s)needs \d+ tokens but the text encoder takes 8 \(model.text_encoder.*"
        r"or model.sample_training_categories=True",
    ):
        model(batch(prompts=(None,), labels=((0,),)))


def sampling_model(max_text_len: int = 16):
    cfg = tiny_model_config()
    cfg.model.text_encoder.max_text_len = max_text_len
    cfg.model.category_names = [f"machine part {word}" for word in LONG_VOCABULARY]
    cfg.model.sample_training_categories = True
    torch.manual_seed(0)
    return instantiate(cfg.model).train()


LONG_VOCABULARY = ("nut", "bolt", "screw", "washer", "gear", "spring", "valve", "pipe")


def test_sampled_training_prompts_name_each_images_own_categories():
    """A vocabulary that does not fit in one prompt trains with sampled prompts; each target's
    phrase is the category of its box."""
    model = sampling_model()
    inputs = batch(prompts=(None, None, "red circle . blue square ."), labels=((6, 1), (), (1,)))
    prompts, label_maps = model.sampled_training_prompts(inputs, model.prompts(inputs))
    assert prompts[2] == "red circle . blue square ." and label_maps[2] is None
    tokenized = model.bert.tokenize(prompts)
    targets = model.prepare_grounding_targets(inputs, tokenized, label_maps)
    for prompt, target, item, phrases in zip(prompts[:2], targets, inputs, tokenized.phrases):
        assert num_prompt_tokens(model.bert.tokenizer, prompt) <= 16
        assert 2 <= len(phrases) < len(LONG_VOCABULARY)
        named = [phrases[label] for label in target["labels"].tolist()]
        wanted = [model.category_names[c] for c in item["instances"].gt_classes.tolist()]
        assert named == wanted
    assert targets[2]["labels"].tolist() == [1]  # an image's own prompt keeps its indices

    losses = model(inputs)
    assert all(torch.isfinite(value) for value in losses.values())
    model.eval()  # inference still prompts with every category name, in chunks
    with torch.no_grad():
        output = model([{"image": inputs[0]["image"]}])[0]
    assert output["phrases"] == model.category_names


def test_sampled_prompts_refuse_an_image_whose_categories_do_not_fit():
    model = sampling_model(max_text_len=8)
    with pytest.raises(ValueError, match=r"batched_inputs\[0\]: the 2 categories of one"):
        model(batch(prompts=(None,), labels=((0, 1),)))


def test_training_set_names_must_be_the_models(model):
    """Training on a dataset whose categories are not model.category_names (a forgotten
    override of the shapes names) trained without a warning."""
    same = register("gd_names_same", ["Circle", "square ", "triangle"])  # case, spacing
    other = register("gd_names_other", ["nut", "bolt", "screw"])
    more = register("gd_names_more", ["circle", "square", "triangle", "star"])
    prompted = register("gd_names_prompted", None)  # labels index each record's own prompt
    check_training_category_names(config([same, prompted], [other]), model)
    with pytest.raises(
        CategoryMismatchError,
        match=r"training set 'gd_names_other' \(class 0: 'circle' vs 'nut'; class 1: 'square' "
        r"vs 'bolt'; class 2: 'triangle' vs 'screw'\)",
    ):
        check_training_category_names(config([same, other], [same]), model)  # the second
    with pytest.raises(CategoryMismatchError, match=r"\(3 names vs 4 categories\)"):
        check_training_category_names(config([more], []), model)
    closed_set = torch.nn.Linear(2, 2)
    assert text_prompted_model(closed_set) is None
    check_training_category_names(config([other], [same]), closed_set)  # not checked
    closed_set.category_names = ["a"]  # a name list alone does not make a prompted model
    assert text_prompted_model(closed_set) is None
    model.set_category_names(["red  circle", "square", "triangle"])  # inner spacing
    spaced = register("gd_names_spaced", ["Red circle", "square", "triangle"])
    joined = register("gd_names_joined", ["redcircle", "square", "triangle"])
    try:
        check_training_category_names(config([spaced], []), model)
        with pytest.raises(CategoryMismatchError, match="'red  circle' vs 'redcircle'"):
            check_training_category_names(config([joined], []), model)
    finally:
        model.set_category_names(["circle", "square", "triangle"])


def test_evaluation_uses_the_test_sets_own_names(model):
    """A test set with other categories (one more, or the same ids named in another order)
    was refused with advice that failed (model.num_classes), or scored phrase k as the
    test set's k-th category whatever its name."""
    extra = register("gd_names_extra", ["circle", "square", "triangle", "star"])
    cfg = config([register("gd_names_train", ["circle", "square", "triangle"])], [extra])
    with evaluation_category_names(cfg, model):
        assert model.category_names == ["circle", "square", "triangle", "star"]
        assert model.default_prompt == "circle . square . triangle . star ."
        check_num_classes(cfg, model, splits=("test",))
    assert model.category_names == ["circle", "square", "triangle"] and model.num_classes == 3

    with pytest.raises(RuntimeError, match="inside"), evaluation_category_names(cfg, model):
        raise RuntimeError("inside")
    assert model.category_names == ["circle", "square", "triangle"]

    other = register("gd_names_permuted", ["square", "circle", "triangle"])
    with pytest.raises(CategoryMismatchError, match="different categories"):
        with evaluation_category_names(config([], [extra, other]), model):
            pass
    with evaluation_category_names(config([], [register("gd_names_none", None)]), model):
        assert model.category_names == ["circle", "square", "triangle"]


def test_gt_classes_index_the_prompt_not_the_category_names(model):
    """The detectors' class-range check does not apply: a prompt may have more phrases than
    the model has category names. gt_classes 3 (past the 3 category names) is the prompt's
    fourth phrase: its target's positive map covers the tokens of "yellow circle" (the second
    "circle", not the first), not those of a phrase clamped into the category range."""
    model.train()
    prompt = "red circle . blue square . green triangle . yellow circle ."
    inputs = batch(prompts=(prompt,), labels=((3,),))
    tokenized = model.bert.tokenize(model.prompts(inputs))
    [target] = model.prepare_grounding_targets(inputs, tokenized)
    assert target["labels"].tolist() == [3]
    [positive_map] = target["positive_map"]
    torch.testing.assert_close(positive_map, tokenized.positive_maps[0][3].to(positive_map))
    tokens = model.bert.tokenizer.convert_ids_to_tokens(tokenized.input_ids[0].tolist())
    covered = torch.nonzero(positive_map).flatten().tolist()
    assert [tokens[i] for i in covered] == ["yellow", "circle"]
    assert tokens.index("yellow") == covered[0]
    losses = model(inputs)
    assert losses and all(torch.isfinite(value) for value in losses.values())
