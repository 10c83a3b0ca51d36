"""The public names memoir relies on in transformers, huggingface_hub and torch, pinned.

A keyword that a release renames is often swallowed (`**kwargs`) instead of refused: transformers
5.24 renamed what `generate` passes to `forward`, and routing silently broke. Every keyword
memoir passes, and every attribute it reads, is checked here by name, and where a rename would be
silent, by effect, so the next rename fails a test instead of a user.
"""

import inspect

import pytest
import torch

from .conftest import FACTS


def _parameters(function) -> set[str]:
    return set(inspect.signature(function).parameters)


def _hub_calls():
    import huggingface_hub
    from huggingface_hub import HfApi

    return {
        "snapshot_download": (huggingface_hub.snapshot_download, {"repo_id", "revision", "allow_patterns", "token"}),
        "hf_hub_download": (huggingface_hub.hf_hub_download, {"repo_id", "filename", "revision", "token"}),
        "HfApi": (HfApi.__init__, {"token"}),
        "HfApi.create_repo": (HfApi.create_repo, {"repo_id", "private", "exist_ok"}),
        "HfApi.list_repo_refs": (HfApi.list_repo_refs, {"repo_id"}),
        "HfApi.upload_folder": (
            HfApi.upload_folder,
            {"repo_id", "folder_path", "commit_message", "commit_description"},
        ),
        "HfApi.create_tag": (HfApi.create_tag, {"repo_id", "tag", "revision", "tag_message"}),
    }


@pytest.mark.parametrize("name", list(_hub_calls()))
def test_huggingface_hub_calls_take_the_keywords_memoir_passes(name):
    function, keywords = _hub_calls()[name]
    assert keywords <= _parameters(function), f"{name} no longer takes {sorted(keywords - _parameters(function))}"


def test_huggingface_hub_exports_the_errors_and_settings_memoir_reads():
    from huggingface_hub import constants, errors, get_token  # noqa: F401

    for name in (
        "HfHubHTTPError",
        "LocalEntryNotFoundError",
        "OfflineModeIsEnabled",
        "RepositoryNotFoundError",
        "RevisionNotFoundError",
    ):
        assert issubclass(getattr(errors, name), Exception), name
    for name in ("ENDPOINT", "HF_HUB_OFFLINE", "HF_HUB_CACHE"):
        assert hasattr(constants, name), name


def test_causal_lm_forward_takes_the_keywords_memoir_passes(model):
    assert {"input_ids", "attention_mask", "position_ids", "use_cache"} <= _parameters(type(model).forward)
    assert "hidden_states" in _parameters(type(model.model.layers[0]).forward)  # the editor replays upper blocks


def test_position_ids_reach_the_model(model, tokenizer):
    """pad_left passes position ids that start at each row's first real token; a forward that
    ignored them would shift every left-padded row."""
    ids = torch.tensor([tokenizer(FACTS[0]["prompt"])["input_ids"]])
    plain = model(input_ids=ids).logits
    shifted = model(input_ids=ids, position_ids=torch.arange(ids.shape[1]).unsqueeze(0) + 5).logits
    assert not torch.allclose(plain, shifted)


def test_generation_config_has_the_fields_routing_reads():
    from transformers import GenerationConfig

    config = GenerationConfig(pad_token_id=0, eos_token_id=1)
    assert (config.pad_token_id, config.eos_token_id) == (0, 1)
    assert hasattr(config, "prefill_chunk_size")


def test_generate_refuses_a_keyword_it_does_not_know(model, tokenizer):
    """memoir's generate keywords (do_sample, max_new_tokens, min_new_tokens, pad_token_id, top_p,
    top_k, temperature) are checked by use everywhere; this pins that an unknown one is refused,
    not ignored, so a rename of any of them fails those tests."""
    ids = torch.tensor([tokenizer(FACTS[0]["prompt"])["input_ids"]])
    output = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=3,
        min_new_tokens=3,
        pad_token_id=tokenizer.pad_token_id,
        top_p=None,
        top_k=None,
        temperature=None,
    )
    assert output.shape[1] == ids.shape[1] + 3
    with pytest.raises((TypeError, ValueError)):
        model.generate(input_ids=ids, max_new_tokens=2, memoir_no_such_keyword=1)


def test_from_pretrained_honours_dtype(model_dir):
    """models.load_model passes `dtype` (transformers 5's name for torch_dtype)."""
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
    assert next(loaded.parameters()).dtype == torch.float64


def test_models_expose_the_output_head_and_gemma_its_softcap(tokenizer):
    from transformers import Gemma3TextConfig

    from .conftest import tiny_model

    gemma = tiny_model("gemma3_text", tokenizer)
    assert isinstance(gemma.get_output_embeddings(), torch.nn.Linear)
    assert hasattr(Gemma3TextConfig(), "final_logit_softcapping")


def test_torch_pre_hooks_see_keyword_arguments():
    seen = {}
    layer = torch.nn.Linear(2, 2)
    layer.register_forward_pre_hook(lambda module, args, kwargs: seen.update(kwargs), with_kwargs=True)
    layer(input=torch.zeros(1, 2))
    assert "input" in seen
