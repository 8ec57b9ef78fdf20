"""The model-family registry: lookup by pipeline object, folder and key; what each entry declares."""

from __future__ import annotations

import json
from types import SimpleNamespace

import diffusers
import pytest

from cemaps.errors import ModelLoadError
from cemaps.models import families as registry
from cemaps.models.families import (
    ModelFamily,
    TextStream,
    family_by_key,
    family_of,
    family_of_folder,
    family_of_single_file_type,
)
from cemaps.models.tiny import tiny_pipeline, tiny_sdxl_pipeline


@pytest.fixture(scope="module")
def sd_pipe():
    return tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def sdxl_pipe():
    return tiny_sdxl_pipeline(seed=0)


def test_family_of_pipeline_objects(sd_pipe, sdxl_pipe):
    assert family_of(sd_pipe).key == "sd"
    assert family_of(sdxl_pipe).key == "sdxl"
    assert family_of(sdxl_pipe).encoders == ("text_encoder", "text_encoder_2")


def test_a_user_subclass_is_its_base_family(sdxl_pipe):
    class MyPipeline(diffusers.StableDiffusionXLPipeline):
        pass

    subclass = MyPipeline.__new__(MyPipeline)
    assert family_of(subclass).key == "sdxl"


def test_unsupported_pipeline_object_is_one_line_naming_it_and_the_families():
    with pytest.raises(ModelLoadError) as error:
        family_of(SimpleNamespace())
    message = str(error.value)
    assert "pipeline class 'SimpleNamespace': not a supported model family" in message
    assert "SD 1.x/2.x (StableDiffusionPipeline" in message and "SDXL (StableDiffusionXLPipeline" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("class_name", "key"), [("StableDiffusionPipeline", "sd"), ("StableDiffusionXLPipeline", "sdxl")]
)
def test_family_of_folder_reads_model_index(tmp_path, class_name, key):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    assert family_of_folder(tmp_path).key == key


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"_class_name": "KandinskyPipeline"}, "names pipeline class 'KandinskyPipeline': not a supported"),
        ({"unet": ["diffusers", "UNet2DConditionModel"]}, "names no _class_name"),
        ("not json", "cannot read"),
    ],
)
def test_family_of_folder_refusals(tmp_path, content, expected):
    text = content if isinstance(content, str) else json.dumps(content)
    (tmp_path / "model_index.json").write_text(text)
    with pytest.raises(ModelLoadError, match=expected):
        family_of_folder(tmp_path)


def test_family_of_folder_without_index(tmp_path):
    with pytest.raises(ModelLoadError, match="model_index.json"):
        family_of_folder(tmp_path)


def test_lora_components_are_diffusers_own():
    for family in registry.families():
        assert family.lora_components() == tuple(getattr(family.pipeline_class(), "_lora_loadable_modules", ()))
    assert family_by_key("sdxl").lora_components() == ("unet", "text_encoder", "text_encoder_2")


@pytest.mark.parametrize("fixture", ["sd_pipe", "sdxl_pipe"])
def test_context_slices_tile_the_unets_context(request, fixture):
    pipe = request.getfixturevalue(fixture)
    family = family_of(pipe)
    slices = family.context_slices(pipe)
    assert family.context_width(pipe) == pipe.unet.config.cross_attention_dim
    assert [s.features.stop - s.features.start for s in slices] == [
        getattr(pipe, s.stream.encoder).config.hidden_size for s in slices
    ]
    assert all(s.tokens == slice(0, pipe.tokenizer.model_max_length) for s in slices)


def test_sdxl_streams_say_what_diffusers_encode_prompt_does():
    sdxl = family_by_key("sdxl")
    assert [s.hidden_state for s in sdxl.text_streams] == ["penultimate", "penultimate"]
    assert [s.pooled for s in sdxl.text_streams] == [False, True]
    assert sdxl.labelling_stream.tokenizer == "tokenizer"
    assert sdxl.feature_sharing(sdxl.labelling_stream) == ("text_encoder", "text_encoder_2")
    assert [s.embedding_key for s in sdxl.embedding_streams()] == ["clip_l", "clip_g"]
    assert family_by_key("sd").embedding_streams()[0].encoder == "text_encoder"


def test_a_joint_transformer_entry_fits_the_type():
    """SD3's layout: two CLIP streams share the first token block on features, T5 fills a second block."""
    family = ModelFamily(
        key="test-joint",
        name="Joint test",
        pipeline_classes=("JointTestPipeline",),
        denoiser="transformer",
        text_streams=(
            TextStream("text_encoder", "tokenizer", pooled=True),
            TextStream("text_encoder_2", "tokenizer_2", labels_tokens=False, pooled=True),
            TextStream("text_encoder_3", "tokenizer_3", token_block=1),
        ),
        attention="joint",
        latent_grid="patch_tokens",
        time_convention="flow_matching",
    )

    def encoder(width):
        return SimpleNamespace(config=SimpleNamespace(hidden_size=width))

    pipe = SimpleNamespace(
        text_encoder=encoder(8),
        text_encoder_2=encoder(12),
        text_encoder_3=encoder(32),
        tokenizer=SimpleNamespace(model_max_length=77),
        tokenizer_2=SimpleNamespace(model_max_length=77),
        tokenizer_3=SimpleNamespace(model_max_length=256),
    )
    slices = {s.stream.encoder: (s.tokens, s.features) for s in family.context_slices(pipe)}
    assert slices["text_encoder_2"] == (slice(0, 77), slice(8, 20))
    assert slices["text_encoder_3"] == (slice(77, 333), slice(0, 32))
    assert family.swappable_components == ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3")


def test_a_token_block_needs_one_labelling_stream():
    with pytest.raises(ValueError, match="exactly one labelling stream"):
        ModelFamily(
            key="bad",
            name="Bad",
            pipeline_classes=("BadPipeline",),
            denoiser="unet",
            text_streams=(TextStream("a", "ta"), TextStream("b", "tb")),
        )


def test_registering_a_class_twice_is_refused():
    taken = family_by_key("sd")
    clash = ModelFamily(
        key="other", name="Other", pipeline_classes=(taken.pipeline_class_name,), denoiser="unet",
        text_streams=taken.text_streams,
    )  # fmt: skip
    with pytest.raises(ValueError, match="already registered to family 'sd'"):
        registry.register_family(clash)


def test_single_file_types():
    assert family_of_single_file_type("xl_base").key == "sdxl"
    assert family_of_single_file_type("v1").key == "sd"
    with pytest.raises(ModelLoadError, match="'ltx-video': not a supported model family"):
        family_of_single_file_type("ltx-video")


def test_unknown_key():
    with pytest.raises(ModelLoadError, match="model family 'sd9' is unknown; expected one of sd, sdxl"):
        family_by_key("sd9")
