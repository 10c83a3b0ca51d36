"""After the target: a row that has generated its edit's target goes on as the base model."""

import dataclasses

import torch

from memoir_cli.memory import Routes, attach, detach
from memoir_cli.release import TargetWatch, watch_for

from .conftest import FACTS
from .helpers import edited_pack


def test_the_watch_releases_a_row_once_its_generated_tokens_end_with_its_target(tokenizer):
    watch = TargetWatch(tokenizer, [["blue green", "Paris"]])
    routes = Routes(torch.tensor([0, 0, -1]), torch.tensor([0, 1, -1]), torch.tensor([1.0, 1.0, 0.0]))
    target = tokenizer(" blue green", add_special_tokens=False)["input_ids"]
    paris = tokenizer("Paris", add_special_tokens=False)["input_ids"]
    watch.start()
    watch.observe(torch.zeros((3, 5), dtype=torch.long), None)  # the prompt's forward: nothing yet
    assert watch.released is None
    width, pad = max(len(target), len(paris)), tokenizer.pad_token_id
    rows = [[pad] * (width - len(target)) + target, paris + [pad] * (width - len(paris)), target]
    for step in range(width):
        watch.observe(torch.tensor([[row[min(step, len(row) - 1)]] for row in rows]), routes)
        if step == len(paris) - 1:
            assert watch.released[1]  # released as soon as "Paris" is complete, and stays so
    assert watch.released.tolist() == [True, True, False]  # row 2 is routed to no edit
    watch.start()
    assert watch.released is None and watch.generated == []


def greedy(model, tokenizer, ids, new):
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    return out[0, ids.shape[1] :].tolist()


def test_generation_after_the_target_is_the_base_models_and_keep_is_the_papers_rule(model, tokenizer):
    pack = edited_pack(model, tokenizer, FACTS[:1], steps=5, threshold=0.0)
    prompt = torch.tensor([tokenizer(FACTS[0]["prompt"])["input_ids"]])
    attach(model, pack)
    kept = greedy(model, tokenizer, prompt, 8)  # the paper's rule: the edit at every position
    detach(model)
    # Make the edit's target the first two tokens it generates, so the release point is known.
    pack.facts[0] = dataclasses.replace(pack.facts[0], target=tokenizer.decode(kept[:2]))
    assert tokenizer(pack.facts[0].target, add_special_tokens=False)["input_ids"] == kept[:2]
    attach(model, pack, watch=watch_for(tokenizer, [pack], "release"))
    released = greedy(model, tokenizer, prompt, 8)
    detach(model)
    base_rest = greedy(model, tokenizer, torch.tensor([prompt[0].tolist() + kept[:2]]), 6)
    assert released[:2] == kept[:2] and released[2:] == base_rest
    assert released != kept  # on this model the edit changes what follows, so the test can fail


def test_beam_search_keeps_the_edit_at_every_position(model, tokenizer):
    pack = edited_pack(model, tokenizer, FACTS[:1], steps=5, threshold=0.0)
    prompt = torch.tensor([tokenizer(FACTS[0]["prompt"])["input_ids"]])
    kwargs = dict(max_new_tokens=6, num_beams=2, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    attach(model, pack)
    kept = model.generate(input_ids=prompt, **kwargs)
    detach(model)
    attach(model, pack, watch=watch_for(tokenizer, [pack], "release"))
    assert torch.equal(model.generate(input_ids=prompt, **kwargs), kept)
    detach(model)


def test_auto_releases_only_the_rows_of_packs_trained_without_an_end_after_the_answer(model, tokenizer):
    ended = edited_pack(model, tokenizer, FACTS[:1], steps=1)
    older = edited_pack(model, tokenizer, FACTS[1:2], steps=1)
    older.manifest.training.end_answer = False  # as packs made before training.end_answer existed
    assert ended.manifest.training.end_answer
    assert watch_for(tokenizer, [ended], "auto") is None  # a trained end stops the answer by itself
    assert watch_for(tokenizer, [ended], "keep") is None
    watch = watch_for(tokenizer, [ended, older], "auto")
    assert watch is not None and watch.targets == [None, [FACTS[1]["target"]]]
    assert watch_for(tokenizer, [ended, older], "release").targets == [[FACTS[0]["target"]], [FACTS[1]["target"]]]


def test_a_row_of_a_pack_without_targets_to_watch_is_never_released(tokenizer):
    watch = TargetWatch(tokenizer, [None])
    routes = Routes(torch.tensor([0]), torch.tensor([0]), torch.tensor([1.0]))
    watch.start()
    for token in tokenizer("Paris", add_special_tokens=False)["input_ids"] * 2:
        watch.observe(torch.tensor([[token]]), routes)
    assert watch.released.tolist() == [False]


def test_the_watch_tokenises_targets_under_the_lock_a_server_shares_its_tokenizer_by(tokenizer):
    """A fast tokenizer used from two threads at once fails; the server's request threads encode
    under a lock, and the watch (in the generating thread) must take it too."""
    import threading

    lock = threading.Lock()
    watch = TargetWatch(tokenizer, [["Paris"]], lock)
    routes = Routes(torch.tensor([0]), torch.tensor([0]), torch.tensor([1.0]))
    paris = tokenizer("Paris", add_special_tokens=False)["input_ids"]
    watch.start()
    with lock:  # a request thread is encoding
        worker = threading.Thread(target=watch.observe, args=(torch.tensor([paris[:1]]), routes))
        worker.start()
        worker.join(timeout=0.5)
        assert worker.is_alive()  # waiting for the tokenizer
    worker.join(timeout=5)
    assert not worker.is_alive() and watch.generated == [paris[:1]]
