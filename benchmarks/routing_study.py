"""Routing variants on ZsRE without training: which query feature, layer, keys and match rule let
a question and its rephrasings reach their own edit while unrelated prompts reach none.

Routing never depends on the trained memory: the feature is read at the input of the edit layer's
down-projection, which no residual of that layer feeds. So every routing variant can be scored at
T = 100 and T = 1000 from the base model's features alone, in minutes, where a trained pack of
1000 edits takes hours. Each variant's tau is calibrated as `--threshold auto` does it
(calibration.py: the built-in unrelated prompts below, the edits' training variants above).

Scored per variant (evaluation prompts are never keys and never calibrate tau):
- rel: the edit question, bare and in chat, reaches its own edit;
- crowded: asked with a system prompt after two earlier turns, it reaches the edit the bare question
  reaches (issue 13's "same route");
- gen: ZsRE's rephrasing, bare and in chat, reaches its own edit ("own"), or an edit with the same
  answer ("answer");
- loc: ZsRE's unrelated question, bare and in chat, reaches no edit; unrelated: the calibration
  prompts (in-sample) reach none.

    python benchmarks/routing_study.py --t 100 1000
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from _environment import environment
from zsre import EARLIER_TURNS, SYSTEM, ZSRE, contested_records

from memoir_cli.batching import encode_left_padded
from memoir_cli.calibration import add_to_histogram, calibrate, calibration_prompts
from memoir_cli.chat import chat_inputs, conversation
from memoir_cli.config import default_top_k
from memoir_cli.editor import generate_prefixes
from memoir_cli.facts import read_zsre_json
from memoir_cli.models import find_edit_layer, load_model
from memoir_cli.tophash import background_prompts, make_permutation, tophash

FEATURES = ("mean", "last", "tail3", "rest")  # how a prompt's tokens become one feature (pool())
KEY_SETS = {
    "chat": ("chat",),
    "bare": ("bare",),
    "chat+bare": ("chat", "bare"),
    "chat+bare+systems": ("chat", "bare", "system0", "system1"),
    "chat+bare+prefixed": ("chat", "bare", "prefixed0", "prefixed1"),
}


SWEEP = (0.35, 0.40, 0.45, 0.50, 0.55, 0.60)  # fixed taus tried on two variants


class _Stop(Exception):
    pass


def pool(x: torch.Tensor, mask: torch.Tensor, how: str, centre: torch.Tensor | None = None) -> torch.Tensor:
    """One feature per row from x [batch, seq, d] over the positions where mask [batch, seq] is 1:
    the mean (the paper), the last token, the mean of the last three, or the mean without the first
    ("rest"); or, over the tokens after the first, their deviations from `centre` (the background
    prompts' mean token feature): the mean weighted by each token's squared deviation ("salient"),
    the mean absolute deviation ("absdev") or its maximum ("maxdev")."""
    mask = mask.to(torch.float32)
    if how == "last":
        last = (mask * torch.arange(mask.shape[1])).argmax(dim=1)
        return x[torch.arange(x.shape[0]), last].float()
    if how != "mean":
        from_end = mask.flip(1).cumsum(1).flip(1)  # 1 at the last position, counting up towards the first
        count = mask.sum(1, keepdim=True)
        kept = mask * ((from_end <= 3) if how == "tail3" else (from_end < count)).float()
        mask = torch.where(kept.sum(1, keepdim=True) > 0, kept, mask)  # a one-token prompt keeps its token
    if how in ("salient", "absdev", "maxdev"):
        dev = x.float() - centre
        if how == "salient":
            w = mask * dev.norm(dim=-1) ** 2
            w = w.unsqueeze(-1)
            return (x.float() * w).sum(1) / w.sum(1).clamp_min(1e-6)
        if how == "maxdev":
            return (dev.abs() * mask.unsqueeze(-1)).amax(1)
        weights = mask.unsqueeze(-1)
        return (dev.abs() * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    weights = mask.unsqueeze(-1)
    return (x.float() * weights).sum(1) / weights.sum(1).clamp_min(1.0)


@dataclass
class Reader:
    """Reads pooled features at several layers' down-projection inputs in one truncated pass."""

    model: torch.nn.Module
    tokenizer: object
    layers: list[int]
    features: tuple[str, ...] = FEATURES
    centres: dict | None = None  # layer -> the background prompts' mean token feature

    @torch.no_grad()
    def read(self, prompts: list, chat: bool) -> dict[tuple[int, str], torch.Tensor]:
        """prompts: strings (bare) or message lists (chat) -> {(layer, pooling): [n, d_ff]}."""
        out: dict[tuple[int, str], list[torch.Tensor]] = {}
        mask: list[torch.Tensor] = []
        last = max(self.layers)

        def hook_for(layer):
            def hook(_module, args):
                for how in self.features:
                    centre = self.centres[layer] if self.centres else None
                    out.setdefault((layer, how), []).append(pool(args[0], mask[0], how, centre))
                if layer == last:
                    raise _Stop

            return hook

        handles = [
            self.model.get_submodule(find_edit_layer(self.model, i).path).register_forward_pre_hook(hook_for(i))
            for i in self.layers
        ]
        try:
            for start in range(0, len(prompts), 16):
                chunk = prompts[start : start + 16]
                if chat:
                    batch = chat_inputs(self.tokenizer, chunk)
                    mask[:] = [batch.pop("routing_mask")]
                else:
                    batch = encode_left_padded(self.tokenizer, chunk, torch.device("cpu"))
                    mask[:] = [batch["attention_mask"]]
                try:
                    self.model(**batch, use_cache=False)
                except _Stop:
                    pass
        finally:
            for handle in handles:
                handle.remove()
        return {key: torch.cat(value) for key, value in out.items()}


def best_per_edit(scores: torch.Tensor, owners: torch.Tensor, n: int) -> torch.Tensor:
    """Scores per key [q, keys] -> per edit [q, n]: the best over each edit's keys (owners [keys])."""
    return torch.full((len(scores), n), -2.0).scatter_reduce(1, owners.expand(len(scores), -1), scores, reduce="amax")


def best_edits(queries: torch.Tensor, keys: torch.Tensor, owners: torch.Tensor, n: int, k: int):
    """Each query's best edit (max over that edit's keys; ties to the later edit), its overlap and the
    runner-up edit's overlap."""
    per_edit = best_per_edit(queries.float() @ keys.float().T / k, owners, n)  # [q, n]
    flipped = per_edit.flip(1)
    top2 = flipped.topk(2, dim=1) if n > 1 else (flipped, torch.zeros_like(flipped, dtype=torch.long))
    best = n - 1 - flipped.argmax(1)
    values = top2[0] if n > 1 else torch.cat([flipped, torch.zeros_like(flipped)], 1)
    return best, values[:, 0], values[:, 1]


def closest_above(
    queries: torch.Tensor,
    features: torch.Tensor,
    keys: torch.Tensor,
    directions: torch.Tensor,
    owners: torch.Tensor,
    n: int,
    k: int,
    tau: float,
) -> torch.Tensor:
    """The "cosine" rule: the gate is the paper's (some edit's mask overlaps the query's >= tau), but
    among the edits that pass it the query goes to the one whose key feature points the most its
    way (cosine of the de-centred features, before TopHash keeps only which k are largest); -1 where
    none passes."""
    overlap = best_per_edit(queries.float() @ keys.float().T / k, owners, n)  # [q, n]
    cosine = best_per_edit(torch.nn.functional.normalize(features, dim=-1) @ directions.T, owners, n)  # [q, n]
    cosine = torch.where(overlap >= tau, cosine, torch.full_like(cosine, -3.0))
    best = n - 1 - cosine.flip(1).argmax(1)  # ties to the later edit, as best_edits
    return torch.where(overlap.amax(1) >= tau, best, torch.full_like(best, -1))


def study(
    feats: dict,
    facts,
    prefixes_used: int,
    layer: int,
    how: str,
    key_set: tuple,
    t: int,
    k: int,
    rule: str,
    fixed_tau: float | None = None,
):
    """One variant's scores at T = t, with tau calibrated (or fixed at `fixed_tau`)."""
    pooling, _, scaled = how.partition("-")
    reference = feats["background"][(layer, pooling)]
    background, spread = reference.mean(0), reference.std(0).clamp_min(1e-6) if scaled else 1.0
    permutation = feats["permutation"]

    def centred(name: str) -> torch.Tensor:
        """Features less the background mean; with a "-z" feature, each scaled by its spread over the
        background prompts (z-scores instead of the paper's plain de-centring)."""
        return (feats[name][(layer, pooling)] - background) / spread

    def masks(name: str) -> torch.Tensor:
        return tophash(centred(name), torch.zeros_like(background), k, permutation)

    def rows(name: str) -> torch.Tensor:
        return masks(name)[:t]

    keys = torch.cat([rows(form) for form in key_set])
    owners = torch.arange(t).repeat(len(key_set))
    directions = torch.nn.functional.normalize(torch.cat([centred(form)[:t] for form in key_set]), dim=-1)

    def route(name: str, limit: int | None = t):
        query = masks(name)[:limit] if limit is not None else masks(name)
        return best_edits(query, keys, owners, t, k)

    own_overlaps = []
    for form in [
        "bare",
        *[f"prefixed{i}" for i in range(prefixes_used)],
        *[f"system{i}" for i in range(prefixes_used)],
    ]:
        query = rows(form)
        shared = (query.float().unsqueeze(1) * keys.float().view(len(key_set), t, -1).transpose(0, 1)).sum(-1) / k
        own_overlaps += shared.max(1).values.tolist()  # [t] best over the edit's own keys
    unrelated = torch.cat([route("unrelated_bare", None)[1], route("unrelated_chat", None)[1]])
    calibration = calibrate(unrelated.tolist(), add_to_histogram([], own_overlaps), k, 0.5)
    tau = calibration.threshold if fixed_tau is None else fixed_tau
    targets = [f.target for f in facts[:t]]
    contested = torch.tensor(contested_records(facts[:t]))

    def routed(name: str) -> torch.Tensor:
        if rule == "cosine":
            return closest_above(masks(name)[:t], centred(name)[:t], keys, directions, owners, t, k, tau)
        best, top, second = route(name)
        ok = top >= tau
        if rule == "margin":
            ok &= (top - second) >= 0.02
        return torch.where(ok, best, torch.full_like(best, -1))

    own = torch.arange(t)

    def share(x: torch.Tensor) -> float:
        return round(float(x.float().mean()), 4)

    def same_answer(edits: torch.Tensor) -> torch.Tensor:
        return torch.tensor([e >= 0 and targets[e] == targets[i] for i, e in enumerate(edits.tolist())])

    bare, chat, crowded = routed("bare"), routed("chat"), routed("crowded")
    gen_bare, gen_chat = routed("rephrase_bare"), routed("rephrase_chat")
    unrelated_routed = torch.cat([routed_all(route, name, tau) for name in ("unrelated_bare", "unrelated_chat")])
    return {
        "layer": layer,
        "feature": how,
        "keys": "+".join(key_set),
        "rule": rule,
        "T": t,
        "tau": round(tau, 4),
        "tau_from": "calibrated" if fixed_tau is None else "fixed",
        "margin": calibration.margin,
        "rel_bare": share(bare == own),
        "rel_chat": share(chat == own),
        "crowded_same": share(crowded == bare),
        "gen_bare_own": share(gen_bare == own),
        "gen_chat_own": share(gen_chat == own),
        "gen_bare_own_agreed": share((gen_bare == own)[~contested]),
        "gen_chat_own_agreed": share((gen_chat == own)[~contested]),
        "agreed": int((~contested).sum()),
        "gen_bare_answer": share(same_answer(gen_bare)),
        "gen_chat_answer": share(same_answer(gen_chat)),
        "loc_bare_none": share(routed("loc_bare") < 0),
        "loc_chat_none": share(routed("loc_chat") < 0),
        "unrelated_none": share(unrelated_routed < 0),
    }


def routed_all(route, name: str, tau: float) -> torch.Tensor:
    best, top, _ = route(name, None)
    return torch.where(top >= tau, best, torch.full_like(best, -1))


def read_features(loaded, facts, layers: list[int], prefixes: list[str], uses: int, features) -> dict:
    first = Reader(loaded.model, loaded.tokenizer, layers, ("rest",)).read(background_prompts(), False)
    centres = {layer: first[(layer, "rest")].mean(0) for layer in layers}
    reader = Reader(loaded.model, loaded.tokenizer, layers, tuple(features), centres)
    questions = [f.prompt for f in facts]
    rephrases = [f.rephrases[0] for f in facts]
    locs = [f.locality[0]["prompt"] for f in facts]
    unrelated = calibration_prompts()
    forms = {
        "background": (background_prompts(), False),
        "bare": (questions, False),
        "chat": ([conversation(q) for q in questions], True),
        "crowded": ([conversation(q, SYSTEM, EARLIER_TURNS) for q in questions], True),
        "rephrase_bare": (rephrases, False),
        "rephrase_chat": ([conversation(r) for r in rephrases], True),
        "loc_bare": (locs, False),
        "loc_chat": ([conversation(p) for p in locs], True),
        "unrelated_bare": (unrelated, False),
        "unrelated_chat": ([conversation(p) for p in unrelated], True),
    }
    half = (len(prefixes) + 1) // 2  # as a chat pack splits them: bare prefixes, then system prompts
    for i in range(uses):
        forms[f"prefixed{i}"] = ([f"{prefixes[i]}. {q}" for q in questions], False)
        forms[f"system{i}"] = ([conversation(q, prefixes[half + i]) for q in questions], True)
    feats: dict = {}
    for name, (prompts, chat) in forms.items():
        started = time.perf_counter()
        feats[name] = reader.read(prompts, chat)
        print(f"  {name}: {len(prompts)} prompts, {time.perf_counter() - started:.0f} s", flush=True)
    return feats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--t", type=int, nargs="+", default=[100, 1000])
    parser.add_argument(
        "--layers", type=int, nargs="+", help="layers to read features at (default: edit layer and 3 others)"
    )
    parser.add_argument("--features", nargs="+", default=list(FEATURES))
    parser.add_argument("--keys", nargs="+", default=list(KEY_SETS))
    parser.add_argument(
        "--rules",
        nargs="+",
        choices=["best", "cosine"],
        default=["best"],
        help="match rules: the best mask overlap (the paper), or among the edits above tau the closest feature",
    )
    parser.add_argument("--no-extras", action="store_true", help="skip the z, layer, margin and sweep rows")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/routing_study.json"))
    args = parser.parse_args()
    loaded = load_model()
    edit = find_edit_layer(loaded.model)
    layers = args.layers or sorted({edit.index - 7, edit.index - 3, edit.index, edit.num_layers - 2})
    k, seed = default_top_k(edit.d_in), 0
    facts = read_zsre_json(ZSRE, on_skip=lambda _: None)[: max(args.t)]
    facts = [f for f in facts if f.rephrases and f.locality]
    prefixes = generate_prefixes(loaded.model, loaded.tokenizer, seed)
    uses = 2  # variants per kind that calibrate (and, in the +systems / +prefixed key sets, key) an edit
    print(f"reading features of {len(facts)} records at layers {layers}", flush=True)
    feats = read_features(loaded, facts, layers, prefixes, uses, args.features)
    feats["permutation"] = make_permutation(edit.d_in, seed)
    rows = []
    variants = [
        (edit.index, how, KEY_SETS[name], rule) for how in args.features for name in args.keys for rule in args.rules
    ]
    if not args.no_extras:
        variants += [(edit.index, f"{how}-z", KEY_SETS[name], "best") for how in ("mean", "rest") for name in KEY_SETS]
        variants += [
            (layer, "mean", KEY_SETS[name], "best")
            for layer in layers
            if layer != edit.index
            for name in ("chat", "chat+bare")
        ]
        variants += [(edit.index, "mean", KEY_SETS[name], "margin") for name in ("chat", "chat+bare")]
    for t in sorted(args.t):
        t = min(t, len(facts))
        for layer, how, key_set, rule in variants:
            rows.append(study(feats, facts, uses, layer, how, key_set, t, k, rule))
        for how in () if args.no_extras else ("mean", "rest-z"):  # what a lower tau would buy, and what it costs
            for tau in SWEEP:
                rows.append(study(feats, facts, uses, edit.index, how, KEY_SETS["chat+bare"], t, k, "best", tau))
    columns = (
        "tau",
        "rel_bare",
        "rel_chat",
        "crowded_same",
        "gen_bare_own",
        "gen_chat_own",
        "gen_bare_own_agreed",
        "gen_chat_own_agreed",
        "gen_bare_answer",
        "gen_chat_answer",
        "loc_bare_none",
        "loc_chat_none",
        "unrelated_none",
    )
    print(
        f"\n{'T':>5} {'layer':>5} {'feature':>7} {'keys':>22} {'rule':>6} " + " ".join(f"{c[:10]:>10}" for c in columns)
    )
    for row in rows:
        cells = " ".join(f"{row[c]:>10.3f}" for c in columns)
        print(
            f"{row['T']:>5} {row['layer']:>5} {row['feature']:>7} {row['keys']:>22} {row['rule']:>6} {cells}"
            + (" (fixed tau)" if row["tau_from"] == "fixed" else "")
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = {"benchmark": "routing_study", **environment(), "k": k, "records": len(facts), "rows": rows}
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
