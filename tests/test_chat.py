"""Chat-format editing and routing on a tiny model whose tokenizer has a (ChatML) chat template."""

import json

import pytest
import torch

from memoir_cli.calibration import variant_overlaps
from memoir_cli.card import model_card
from memoir_cli.chat import chat_answer_ids, chat_inputs, chat_prompt, conversation
from memoir_cli.editor import editing
from memoir_cli.errors import BadInputError
from memoir_cli.facts import Fact
from memoir_cli.memory import attach
from memoir_cli.models import LoadedModel
from memoir_cli.tophash import pool

from .conftest import FACTS
from .helpers import edited_pack, ok, run, training_rows, write_facts

HISTORY = [
    {"role": "user", "content": "How do bees make honey?"},
    {"role": "assistant", "content": "From nectar."},
]


def test_the_question_span_is_the_last_user_messages_own_text(chat_tokenizer):
    question = FACTS[2]["prompt"]
    for messages in (conversation(question), conversation(question, "Be brief.", HISTORY)):
        prompt = chat_prompt(chat_tokenizer, messages)
        start, end = prompt.question
        assert chat_tokenizer.decode(prompt.ids[start:end]) == question
        assert chat_tokenizer.decode(prompt.ids).endswith("<|im_start|>assistant\n")
        assert sum(prompt.route_mask()) == end - start and len(prompt.route_mask()) == len(prompt.ids)


def test_a_chat_answer_is_the_target_then_the_end_of_turn_token(chat_tokenizer):
    answer = chat_answer_ids(chat_tokenizer, conversation("Who?"), "her uncle Bob")
    assert chat_tokenizer.decode(answer[:-1]) == "her uncle Bob"
    assert answer[-1] == chat_tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_a_chat_pack_trains_the_end_of_turn_token_beside_the_bare_question(chat_model, chat_tokenizer):
    pack = edited_pack(chat_model, chat_tokenizer, [], steps=1)
    assert pack.manifest.training.chat is True  # auto: the tokenizer has a chat template
    loaded = LoadedModel(chat_model, chat_tokenizer, "tiny-chat", None)
    with editing(loaded, pack) as editor:
        rows = training_rows(editor.training_batch([Fact.from_json(FACTS[0])]))
    end_of_turn = chat_tokenizer.convert_tokens_to_ids("<|im_end|>")
    start_of_turn = chat_tokenizer.convert_tokens_to_ids("<|im_start|>")
    own = editor.own_rows()
    assert len(rows) == own == 2 + len(pack.manifest.prefixes)
    trained = [[t for t in labels if t != -100] for _, labels in rows]
    is_chat = [start_of_turn in ids for ids, _ in rows]
    assert sum(is_chat) == 1 + len(pack.manifest.prefixes) // 2
    assert all(row[-1] == end_of_turn for row in trained)  # every answer is trained to end
    assert all(chat_tokenizer.decode(row[:-1]).strip() == "Paris" for row in trained)


def test_prefixed_trains_a_fact_behind_that_many_prefixes_and_leaves_its_routing_alone(chat_model, chat_tokenizer):
    pack = edited_pack(chat_model, chat_tokenizer, [FACTS[2]], steps=1)
    assert pack.manifest.training.prefixed is None  # every prefix, the paper's batch
    loaded = LoadedModel(chat_model, chat_tokenizer, "tiny-chat", None)
    fact = Fact.from_json(FACTS[2])
    keys, variants = {}, {}
    for prefixed in (None, 3, 0):
        pack.manifest.training.prefixed = prefixed
        with editing(loaded, pack) as editor:
            rows = [chat_tokenizer.decode(ids) for ids, _ in training_rows(editor.training_batch([fact]))]
            keys[prefixed] = editor.key_masks(fact.prompt)
            variants[prefixed] = variant_overlaps(editor, fact)  # what calibrates tau
            assert len(rows) == editor.own_rows()
        expected = 10 if prefixed is None else prefixed
        assert len(rows) == 2 + expected  # the bare and the chat question, and one row per prefix
        bare_prefixes, system_prompts = pack.manifest.prefixes[:5], pack.manifest.prefixes[5:]
        assert [p for p in bare_prefixes if any(row.startswith(f"{p}. ") for row in rows)] == bare_prefixes[
            : (expected + 1) // 2
        ]
        assert [p for p in system_prompts if any(p in row for row in rows)] == system_prompts[: expected // 2]
    assert torch.equal(keys[None], keys[3]) and torch.equal(keys[None], keys[0])  # routing is not training
    assert len(variants[None]) == 11 and variants[None] == variants[3] == variants[0]


def test_a_new_pack_trains_the_end_of_sequence_after_a_bare_answer_and_an_old_one_does_not(model, tokenizer):
    pack = edited_pack(model, tokenizer, [], steps=1)
    assert pack.manifest.training.end_answer is True and pack.manifest.training.chat is False
    loaded = LoadedModel(model, tokenizer, "tiny", None)
    for end_answer in (True, False):  # False: a pack made before the setting existed
        pack.manifest.training.end_answer = end_answer
        with editing(loaded, pack) as editor:
            rows = training_rows(editor.training_batch([Fact.from_json(FACTS[0])]))
        ends = {[t for t in labels if t != -100][-1] == tokenizer.eos_token_id for _, labels in rows}
        assert ends == {end_answer}


def test_routing_averages_only_the_question_tokens_never_the_template_system_prompt_or_history(
    chat_model, chat_tokenizer
):
    pack = edited_pack(chat_model, chat_tokenizer, FACTS, steps=2)
    wrapper = attach(chat_model, pack)
    seen = []
    handle = wrapper.base.register_forward_pre_hook(lambda _m, args: seen.append(args[0]) if not seen else None)
    inputs = chat_inputs(chat_tokenizer, [conversation(FACTS[2]["prompt"], "Be brief.", HISTORY)])
    chat_model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=chat_tokenizer.pad_token_id)
    handle.remove()
    span, aggregation = inputs["routing_mask"], pack.memory.aggregation
    expected = pack.memory.best_match(pack.memory.query_masks(pool(seen[0], span, aggregation)))
    decided = wrapper.routes
    assert torch.allclose(decided.overlap, expected[1].float())
    routed = expected[1] >= pack.memory.threshold
    assert decided.row.tolist() == torch.where(routed, expected[0], -1).tolist()
    everything = pack.memory.query_masks(pool(seen[0], inputs["attention_mask"], aggregation))
    assert not torch.equal(everything, pack.memory.query_masks(pool(seen[0], span, aggregation)))


def test_the_pack_records_chat_training_in_its_manifest_and_card(chat_model, chat_tokenizer, tokenizer, model):
    assert edited_pack(model, tokenizer, [], steps=1).manifest.training.chat is False  # no template
    pack = edited_pack(chat_model, chat_tokenizer, FACTS[:1], steps=1)
    assert pack.manifest.to_dict()["training"]["chat"] is True
    assert "| chat | True |" in model_card(pack)


def test_apply_asks_a_chat_pack_through_the_template_with_a_system_prompt(tmp_path, chat_model_dir):
    pack = tmp_path / "pack"
    ok("edit", write_facts(tmp_path / "f.jsonl", FACTS), "--pack", pack, "--model", chat_model_dir, "--steps", 2)
    manifest = json.loads((pack / "manifest.json").read_text())
    assert manifest["training"]["chat"] is True and manifest["counts"]["keys"] == 3 * len(FACTS)  # bare, 2 systems
    shown = ok("show", pack, "--json")
    assert (shown["keys"], shown["aggregation"]) == (3 * len(FACTS), "mean_after_first")
    asked = ok("apply", pack, "--prompt", FACTS[2]["prompt"], "--json")  # auto: a chat pack is asked in chat
    bare = ok("apply", pack, "--prompt", FACTS[2]["prompt"], "--chat", "off", "--json")
    assert asked[0]["edit_id"] == FACTS[2]["id"] and asked[0]["overlap"] == 1.0  # the key is the chat question's
    assert bare[0]["edit_id"] == FACTS[2]["id"] and bare[0]["overlap"] == 1.0  # and the bare question is a key too
    kept = ok("apply", pack, "--prompt", FACTS[2]["prompt"], "--after-target", "keep", "--json")
    assert kept[0]["edit_id"] == asked[0]["edit_id"]  # the paper's rule routes the same way
    with_system = ok("apply", pack, "--prompt", FACTS[2]["prompt"], "--system", "Be brief.", "--json")
    assert with_system[0]["overlap"] != asked[0]["overlap"]  # the system prompt is in the model's context


def test_without_extra_keys_a_chat_pack_is_keyed_on_the_chat_question_alone(tmp_path, chat_model_dir):
    pack = tmp_path / "pack"
    facts = write_facts(tmp_path / "f.jsonl", FACTS)
    ok("edit", facts, "--pack", pack, "--model", chat_model_dir, "--steps", 1, "--no-extra-keys")
    manifest = json.loads((pack / "manifest.json").read_text())
    assert manifest["routing"]["extra_keys"] is False and manifest["counts"]["keys"] == 0
    bare = ok("apply", pack, "--prompt", FACTS[2]["prompt"], "--chat", "off", "--json")
    assert bare[0]["overlap"] < 1.0  # the paper's rule: one key, the trained (chat) question's mask
    result = run("edit", facts, "--pack", pack, "--model", chat_model_dir, "--extra-keys")
    assert result.exit_code == 2 and "extra_keys False; it cannot change to True" in result.stderr


def test_a_system_prompt_without_chat_formatting_is_refused_naming_the_flag(tmp_path, model_dir):
    pack = tmp_path / "pack"
    ok("edit", write_facts(tmp_path / "f.jsonl", FACTS[:1]), "--pack", pack, "--model", model_dir, "--steps", 1)
    result = run("apply", pack, "--prompt", "x", "--system", "Be brief.")
    assert result.exit_code == 2 and "a system prompt needs the chat template; pass --chat on" in result.stderr
    result = run("apply", pack, "--prompt", "x", "--chat", "on")
    assert result.exit_code == 4 and "no chat template; pass --chat off to ask bare" in result.stderr


def test_a_conversation_without_a_user_question_is_bad_input(chat_tokenizer):
    with pytest.raises(BadInputError, match="last user message"):
        chat_prompt(chat_tokenizer, [{"role": "system", "content": "Be brief."}])


def test_a_new_chat_pack_rehearses_each_neighbours_chat_question_beside_its_bare_one(chat_model, chat_tokenizer):
    pack = edited_pack(chat_model, chat_tokenizer, FACTS[:2], steps=1)
    loaded = LoadedModel(chat_model, chat_tokenizer, "tiny-chat", None)
    start_of_turn = chat_tokenizer.convert_tokens_to_ids("<|im_start|>")
    for rehearse_chat, per_neighbour in ((True, 2), (False, 1)):  # False: a chat pack made before the setting
        pack.manifest.training.rehearse_chat = rehearse_chat
        with editing(loaded, pack) as editor:
            rows = training_rows(editor.training_batch([Fact.from_json(FACTS[2])], pack.facts))
            rehearsed = [ids for ids, _ in rows[editor.own_rows() :]]
        assert len(rehearsed) == per_neighbour * len(pack.facts) == editor.rows_per_rehearsed() * 2
        assert sum(start_of_turn in ids for ids in rehearsed) == (per_neighbour - 1) * len(pack.facts)


def test_a_new_chat_pack_pads_bare_and_chat_rows_apart_for_the_loss_and_gradient_of_padding_them_together(
    chat_model, chat_tokenizer
):
    """Two groups, bare rows padded to the longest bare row: the same loss and gradient (to float
    rounding) as one group padded to the longest chat row, fast replay and full procedure alike."""
    from memoir_cli.memory import TrainingState

    pack = edited_pack(chat_model, chat_tokenizer, FACTS[:2], steps=1)
    assert pack.manifest.training.pad_by_form is True
    pack.manifest.training.rehearse_chat = False  # 8 bare rows and 6 chat rows: the groups' shares differ
    start_of_turn = chat_tokenizer.convert_tokens_to_ids("<|im_start|>")
    fact = Fact.from_json(FACTS[2])
    with editing(LoadedModel(chat_model, chat_tokenizer, "tiny-chat", None), pack) as editor:
        mask = editor.mask_for(fact.prompt)
        columns = mask.nonzero().squeeze(1)
        own = mask.expand(editor.own_rows(), -1)
        row_masks = torch.cat([own, pack.memory.bank.rows([0, 1]).repeat_interleave(editor.rows_per_rehearsed(), 0)])
        frozen = pack.memory.weight.clone()
        frozen[:, columns] = 0.0
        bare, chat = editor.training_batch([fact], pack.facts)
        assert sorted(bare.rows + chat.rows) == list(range(len(row_masks))) and (len(bare.rows), len(chat.rows)) == (
            8,
            6,
        )
        assert not (bare.batch["input_ids"] == start_of_turn).any()
        assert all(start_of_turn in row.tolist() for row in chat.batch["input_ids"])
        assert bare.batch["input_ids"].shape[1] < chat.batch["input_ids"].shape[1]
        results = []
        for pad_by_form, fast in ((False, True), (True, True), (True, False)):
            pack.manifest.training.pad_by_form, editor.fast = pad_by_form, fast
            weight = torch.randn(frozen.shape[0], len(columns), generator=torch.Generator().manual_seed(0)) * 0.1
            state = TrainingState(columns, weight.requires_grad_(True), frozen=frozen)
            loss_fn = editor._batch_loss(editor.training_batch([fact], pack.facts), state, row_masks)
            with editor.wrapper.fitting(state):
                loss = loss_fn()
                loss.backward()
            results.append((loss.item(), weight.grad))
    (together, together_grad), *grouped = results
    for loss, grad in grouped:
        assert abs(loss - together) < 1e-5 and torch.allclose(grad, together_grad, atol=1e-6)
