"""Deformable DETR against transformers' port of the original implementation: the same
weights give the same outputs, in each of the three variants."""

from __future__ import annotations

import pytest
import torch
from detectron2.config import instantiate
from torch import nn

from .deformable_detr_tiny import VARIANTS, tiny_model_config


def _hf_to_ours_state_dict(hf, with_box_refine: bool, as_two_stage: bool) -> dict:
    """Rename the transformer and heads of a transformers ``DeformableDetrForObjectDetection``
    (a port of the original Deformable DETR) into our (detrex) names."""
    params = {name: value.detach() for name, value in hf.named_parameters()}
    state = {"transformer.level_embeds": params["model.level_embed"]}
    msda = ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
    for layer_index in range(len(hf.model.encoder.layers)):
        src, dst = (
            f"model.encoder.layers.{layer_index}.",
            f"transformer.encoder.layers.{layer_index}.",
        )
        for kind in ("weight", "bias"):
            for name in msda:
                state[f"{dst}attentions.0.{name}.{kind}"] = params[f"{src}self_attn.{name}.{kind}"]
            state[f"{dst}norms.0.{kind}"] = params[f"{src}self_attn_layer_norm.{kind}"]
            state[f"{dst}norms.1.{kind}"] = params[f"{src}final_layer_norm.{kind}"]
            state[f"{dst}ffns.0.layers.0.0.{kind}"] = params[f"{src}mlp.fc1.{kind}"]
            state[f"{dst}ffns.0.layers.1.{kind}"] = params[f"{src}mlp.fc2.{kind}"]
    for layer_index in range(len(hf.model.decoder.layers)):
        src, dst = (
            f"model.decoder.layers.{layer_index}.",
            f"transformer.decoder.layers.{layer_index}.",
        )
        for kind in ("weight", "bias"):
            state[f"{dst}attentions.0.attn.in_proj_{kind}"] = torch.cat(
                [params[f"{src}self_attn.{x}_proj.{kind}"] for x in "qkv"]
            )
            state[f"{dst}attentions.0.attn.out_proj.{kind}"] = params[
                f"{src}self_attn.o_proj.{kind}"
            ]
            for name in msda:
                state[f"{dst}attentions.1.{name}.{kind}"] = params[
                    f"{src}encoder_attn.{name}.{kind}"
                ]
            for norm_index, norm in enumerate(
                ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm")
            ):
                state[f"{dst}norms.{norm_index}.{kind}"] = params[f"{src}{norm}.{kind}"]
            state[f"{dst}ffns.0.layers.0.0.{kind}"] = params[f"{src}mlp.fc1.{kind}"]
            state[f"{dst}ffns.0.layers.1.{kind}"] = params[f"{src}mlp.fc2.{kind}"]
    for name in (
        "reference_points",
        "enc_output",
        "enc_output_norm",
        "pos_trans",
        "pos_trans_norm",
    ):
        for kind in ("weight", "bias"):
            if f"model.{name}.{kind}" in params:
                state[f"transformer.{name}.{kind}"] = params[f"model.{name}.{kind}"]
    if not as_two_stage:
        state["query_embedding.weight"] = params["model.query_position_embeddings.weight"]
    # The heads the decoder uses for refinement / proposals are the output heads (tied).
    for index, (class_head, box_head) in enumerate(zip(hf.class_embed, hf.bbox_embed)):
        for kind in ("weight", "bias"):
            state[f"class_embed.{index}.{kind}"] = getattr(class_head, kind).detach()
            for layer_index, layer in enumerate(box_head.layers):
                state[f"bbox_embed.{index}.layers.{layer_index}.{kind}"] = getattr(
                    layer, kind
                ).detach()
    for key in list(state):
        if (with_box_refine and key.startswith("bbox_embed.")) or (
            as_two_stage and key.startswith("class_embed.")
        ):
            state["transformer.decoder." + key] = state[key]
    return state


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_matches_transformers_port_of_the_original(variant):
    """Same weights and inputs as transformers' ``DeformableDetrForObjectDetection`` (a port of
    the authors' code, which detrex also follows) give the same predictions, in float64."""
    transformers = pytest.importorskip("transformers")
    with_box_refine, as_two_stage = VARIANTS[variant]
    channels, num_queries, num_classes = 32, 6, 3
    config = transformers.DeformableDetrConfig(
        d_model=channels,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_feature_levels=3,
        num_queries=num_queries,
        two_stage_num_proposals=num_queries,
        with_box_refine=with_box_refine,
        two_stage=as_two_stage,
        num_labels=num_classes,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=transformers.ResNetConfig(
            embedding_size=8,
            hidden_sizes=[8, 8, 8, 8],
            depths=[1, 1, 1, 1],
            out_features=["stage2", "stage3", "stage4"],
        ),
        disable_custom_kernels=True,
    )
    hf = transformers.DeformableDetrForObjectDetection(config).double().eval()
    if not with_box_refine:
        # Without refinement, one head pair serves every layer (as in detrex).
        assert hf.bbox_embed[1].layers[0].weight is hf.bbox_embed[0].layers[0].weight
    with torch.no_grad():
        for name, parameter in hf.named_parameters():
            if "backbone" not in name:
                parameter.normal_(0.0, 0.2)
        if as_two_stage:
            # Proposals are ranked by the first logit, not the best one: make the two differ.
            hf.model.decoder.class_embed[-1].bias.copy_(torch.tensor([-2.0, 2.0, 2.0]))

    # Multi-scale inputs with padding in image 1; the backbone and input projections are
    # bypassed on both sides.
    shapes = [(8, 10), (4, 5), (2, 3)]
    feats = [torch.randn(2, channels, h, w, dtype=torch.float64) for h, w in shapes]
    masks = [torch.zeros(2, h, w, dtype=torch.bool) for h, w in shapes]
    masks[0][1, 6:] = True
    masks[0][1, :, 7:] = True
    masks[1][1, 3:] = True
    masks[1][1, :, 4:] = True
    masks[2][1, :, 2:] = True

    class GivenFeatures(nn.Module):
        def forward(self, pixel_values, pixel_mask):
            return [(feat, ~mask) for feat, mask in zip(feats, masks, strict=True)]

    hf.model.backbone = GivenFeatures()
    hf.model.input_proj = nn.ModuleList([nn.Identity() for _ in shapes])
    with torch.no_grad():
        expected = hf(pixel_values=torch.zeros(2, 3, 64, 80, dtype=torch.float64))
        pos_embeds = [
            hf.model.position_embedding(
                shape=feat.shape, device=feat.device, dtype=torch.float64, mask=~mask
            )
            for feat, mask in zip(feats, masks, strict=True)
        ]

    model = instantiate(tiny_model_config(with_box_refine, as_two_stage)).double().eval()
    state = _hf_to_ours_state_dict(hf, with_box_refine, as_two_stage)
    incompatible = model.load_state_dict(state, strict=False)
    assert not incompatible.unexpected_keys
    assert all(key.startswith(("backbone.", "neck.")) for key in incompatible.missing_keys)
    model.multi_level_inputs = lambda images, padding_mask: (feats, masks, pos_embeds)
    with torch.no_grad():
        outputs = model.forward_outputs(None, None, None)

    # Reference points and proposals are float32 in both codebases (as in detrex), hence
    # the tolerance.
    tolerance = dict(rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(outputs["pred_logits"], expected.logits, **tolerance)
    torch.testing.assert_close(outputs["pred_boxes"], expected.pred_boxes, **tolerance)
    assert outputs["pred_logits"].shape == (2, num_queries, num_classes)
    if as_two_stage:
        torch.testing.assert_close(
            outputs["enc_outputs"]["pred_logits"], expected.enc_outputs_class, **tolerance
        )
        torch.testing.assert_close(
            outputs["enc_outputs"]["pred_boxes"],
            expected.enc_outputs_coord_logits.sigmoid(),
            **tolerance,
        )
