"""What each command does, as library functions: the CLI only parses, calls one of these, renders."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from .calibration import Calibration, UnrelatedPrompts, add_to_histogram, calibrate, variant_overlaps
from .chat import ChatMode, has_chat_template
from .config import (
    DEFAULT_CHECKPOINT_EVERY,
    PREFIXED,
    PROTECT,
    REHEARSE,
    RoutingConfig,
    TopHashConfig,
    TrainingConfig,
    default_lr,
    default_stop_delta,
    default_top_k,
)
from .conflicts import Conflict, OnConflict, find_conflicts, resolve
from .editor import Editor, EditResult, MixedPrecision, Optimizer, edit_batches, editing, generate_prefixes
from .errors import BadInputError
from .facts import Fact
from .history import NewVersion, edit_record, replay_info, weight_change
from .models import DEFAULT_MODEL, DEFAULT_MODEL_ID, LoadedModel, find_edit_layer, load_model, native_bf16
from .pack import Pack, new_pack
from .store import (
    WriteOptions,
    commit,
    head_version,
    is_committed,
    load_pack,
    pack_lock,
    pause_point,
    protection_cache,
    refuse_foreign_folder,
    unrelated_cache,
    writing,
)
from .tophash import Aggregation, background_prompts, make_permutation, prompt_features

AUTO = "auto"


class MemoryDtype(str, Enum):
    """What `--memory-dtype` stores the residual in (config.Manifest.memory_dtype): float32, or the
    model's own dtype (a bf16 model's pack is then half the size)."""

    float32 = "float32"
    model = "model"


@dataclass
class EditOptions:
    """Settings of `memoir edit`; None means: the pack's value, else the default for the model."""

    layer: int | None = None
    top_k: int | None = None
    threshold: float | str | None = None  # a number, or AUTO (calibrated at every run; a new pack's default)
    seed: int | None = None
    steps: int | None = None
    optimizer: Optimizer | str | None = None  # a new pack: adam (config.TrainingConfig.optimizer)
    lr: float | None = None
    prefixed: int | None = None  # None: the pack's value (a new pack: config.PREFIXED)
    rehearse: int | None = None
    rehearse_overlap: float | None = None
    rehearse_chat: bool | None = None  # a new chat pack: on (config.TrainingConfig.rehearse_chat)
    protect: float | None = None
    mixed_precision: MixedPrecision | str | None = None  # a new pack: auto (bf16 where the hardware has it)
    chat: ChatMode | str | None = None  # auto: a new pack trains the chat form when the tokenizer has a template
    extra_keys: bool | None = None  # a new pack: on (config.RoutingConfig.extra_keys); fixed from then on
    aggregation: Aggregation | str | None = None  # a new pack: mean_after_first (TopHashConfig); fixed
    device: str = "cpu"
    dtype: str = "auto"  # models.Dtype: auto is the checkpoint's dtype on a GPU, float32 on the CPU
    device_map: str | None = None  # accelerate's, e.g. "auto" for a model larger than one GPU
    memory_dtype: MemoryDtype | str | None = None  # a new pack: float32; "model": the model's dtype; fixed
    on_conflict: OnConflict | str = OnConflict.keep_both  # not stored: what this run does (conflicts.py)
    batch_size: int = 1  # facts fitted together (editor.edit_batch); the record's ops say how each was made


# The training settings an edit run stores as given (others are resolved first: optimizer,
# mixed_precision, chat); one list, read by _update_settings and by benchmarks that store settings.
TRAINING_AS_GIVEN = ("steps", "lr", "prefixed", "rehearse", "rehearse_overlap", "rehearse_chat", "protect")


@dataclass
class EditPlan:
    """What an edit run will do: facts to add (some replacing an active edit), facts to skip."""

    add: list[Fact] = field(default_factory=list)
    replaces: dict[str, str] = field(default_factory=dict)  # new fact id -> id of the active edit it replaces
    skipped: list[str] = field(default_factory=list)  # already active with the same target
    superseded: list[str] = field(default_factory=list)  # a later line of the same input gives the prompt a new target
    displaces: dict[str, list[str]] = field(default_factory=dict)  # on_conflict replace: new id -> edits it ends
    conflicts: list[Conflict] = field(default_factory=list)  # found once the model is loaded (not in a dry run)


@dataclass
class EditSummary:
    pack: str
    created: bool
    plan: EditPlan
    results: list[EditResult] = field(default_factory=list)
    seconds: float = 0.0
    dry_run: bool = False
    versions: list[int] = field(default_factory=list)
    calibration: Calibration | None = None  # the last calibration of tau this run made (auto routing)

    def to_json(self) -> dict:
        edited = len(self.results)
        return {
            "pack": self.pack,
            "dry_run": self.dry_run,
            "versions": self.versions,
            "created": self.created,
            "edited": edited,
            "planned": len(self.plan.add),
            "replaced": len(self.plan.replaces),
            "skipped": len(self.plan.skipped),
            "converged": sum(r.converged for r in self.results),
            "seconds": round(self.seconds, 3),
            "seconds_per_edit": round(sum(r.seconds for r in self.results) / edited, 3) if edited else None,
            "edits": [
                {
                    "id": r.edit_id,
                    "loss": round(r.loss, 5),
                    "steps": r.steps,
                    "converged": r.converged,
                    "rehearsed": r.rehearsed,
                    "seconds": round(r.seconds, 3),
                    "replaces": self.plan.replaces.get(r.edit_id),
                }
                for r in self.results
            ],
            "added_ids": [f.id for f in self.plan.add],
            "replaces": self.plan.replaces,
            "skipped_ids": self.plan.skipped,
            "superseded_ids": self.plan.superseded,
            "conflicts": [c.to_json() for c in self.plan.conflicts],
            "calibration": self.calibration.reported() if self.calibration else None,
            "displaces": self.plan.displaces,
        }


def revert_edits(
    pack_path: str | Path,
    edit_ids: Sequence[str] = (),
    prompts: Sequence[str] = (),
    write: WriteOptions = WriteOptions(),
) -> NewVersion:
    """Deactivate edits (by id, or the active edit of an exact prompt) so routing never selects them
    again, as a new version. No model is needed: the
    memory's weights do not change."""
    if not edit_ids and not prompts:
        raise BadInputError("name at least one edit to revert, by id or by prompt")
    with writing(pack_path, write):
        pack = load_pack(pack_path)
        bank = pack.memory.bank
        active = dict(zip(bank.ids, bank.active.tolist()))
        by_prompt = {f.prompt: f.id for f in pack.facts if active[f.id]}
        targets = []
        for edit_id in edit_ids:
            if edit_id not in active:
                raise BadInputError(f"{pack_path}: no edit with id {edit_id!r}")
            if not active[edit_id]:
                raise BadInputError(f"{pack_path}: edit {edit_id!r} is already inactive")
            targets.append(edit_id)
        for prompt in prompts:
            if prompt not in by_prompt:
                raise BadInputError(f"{pack_path}: no active edit has the prompt {prompt!r}")
            targets.append(by_prompt[prompt])
        reverted = list(dict.fromkeys(targets))
        for edit_id in reverted:
            pack.memory.deactivate(edit_id)
        version = commit(
            pack, Path(pack_path), edit_record("revert", write.message, [["deactivate", i] for i in reverted], [])
        )
    return NewVersion(str(pack_path), version, reverted=reverted)


def model_spec_for(pack: Pack) -> str:
    """The --model to use for a pack when the user names none: the model it was made for."""
    return DEFAULT_MODEL if pack.base_model_id == DEFAULT_MODEL_ID else pack.base_model_id


def edit_pack(
    facts: list[Fact],
    pack_path: str | Path,
    model_spec: str | LoadedModel | None = None,
    options: EditOptions = EditOptions(),
    on_start: Callable[[int], None] | None = None,
    on_step: Callable[[int, Fact, int, float], None] | None = None,
    on_fact: Callable[[int, EditResult], None] | None = None,
    dry_run: bool = False,
    write: WriteOptions = WriteOptions(),
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    snapshot_every: int | None = None,
) -> EditSummary:
    """Create the pack at `pack_path` (or add to it) with `facts`, as a new version.

    Refresh semantics: a fact whose prompt has an active edit with the same target is skipped; with
    a different target it replaces that edit (the old one is deactivated first). `dry_run` plans
    without loading a model. One writer at a time: see `pack_lock`. Every `checkpoint_every` facts
    are committed as a version of their own, so a run that is killed loses at most that many facts'
    work and a rerun of the same command continues where it stopped.
    """
    start = time.perf_counter()
    pack_path = Path(pack_path)
    refuse_foreign_folder(pack_path)
    seen = _committed(pack_path, options)  # as a reader sees it: no lock
    if dry_run:
        return EditSummary(str(pack_path), seen is None, plan_edits(facts, seen), dry_run=True)
    # The model loads, and a new pack is made, before anything is written: a model that does not
    # load or a layer it lacks leaves no trace (not even a lock file).
    loaded = _loaded(model_spec, seen, options)
    fresh = create_pack(loaded, options) if seen is None else None
    with pack_lock(pack_path, write):
        unchanged = (
            seen is not None and is_committed(pack_path) and head_version(pack_path) == (seen.manifest.version or 1)
        )
        existing = seen if unchanged else _committed(pack_path, options)  # another writer may have committed
        if existing is not None and seen is None and model_spec is None and existing.base_model_id != loaded.model_id:
            loaded = _loaded(None, existing, options)  # it was made for its own model
        plan = plan_edits(facts, existing)
        run = _EditRun(plan, existing, pack_path, options, write.message, checkpoint_every, snapshot_every)
        if existing is not None:
            pack = existing
        else:
            pack = fresh if fresh is not None else create_pack(loaded, options)  # it was deleted meanwhile
        return run.execute(loaded, pack, on_start, on_step, on_fact, start)


def _committed(pack_path: Path, options: EditOptions) -> Pack | None:
    """The pack at `pack_path` if one is committed there, checked against the settings it cannot change."""
    if not is_committed(pack_path):
        return None
    pack = load_pack(pack_path)
    _check_fixed_settings(pack, options)
    return pack


def _loaded(model_spec: str | LoadedModel | None, pack: Pack | None, options: EditOptions) -> LoadedModel:
    """The model to edit with: the one given (a script editing many times in one process loads it
    once), or the one named, or the pack's own, or the default."""
    if isinstance(model_spec, LoadedModel):
        return model_spec
    spec = model_spec or (model_spec_for(pack) if pack is not None else None)
    return load_model(spec, options.device, options.dtype, options.device_map)


@dataclass
class _EditRun:
    """One `memoir edit`: fits the planned facts and commits them as one version, or one per checkpoint."""

    plan: EditPlan
    existing: Pack | None
    pack_path: Path
    options: EditOptions
    message: str | None
    checkpoint_every: int
    snapshot_every: int | None

    def execute(self, loaded: LoadedModel, pack: Pack, on_start, on_step, on_fact, start) -> EditSummary:
        plan, options = self.plan, self.options
        settings_changed = self.existing is not None and _update_settings(pack, options, loaded)  # create_pack did
        summary = EditSummary(str(self.pack_path), self.existing is None, plan)
        ops: list[list] = []  # the version record's operations (history.replay)
        done: list[Fact] = []
        before = pack.memory.weight.clone()
        with editing(loaded, pack, protection_cache=protection_cache(self.pack_path)) as editor:
            masks = editor.masks_for([fact.prompt for fact in plan.add])
            plan.conflicts = find_conflicts(pack.memory, pack.facts, plan.add, masks, plan.replaces)
            policy = OnConflict(options.on_conflict)
            plan.displaces = resolve(plan.conflicts, policy, plan.add, plan.replaces, plan.superseded)
            if on_start:
                on_start(len(plan.add))
            variants = self._known_variants(editor, pack)
            unrelated = UnrelatedPrompts(editor, unrelated_cache(self.pack_path))
            for batch in edit_batches(masks, options.batch_size, pack.memory.threshold, pack.memory.k):
                facts = [plan.add[number] for number in batch]
                for fact in facts:
                    for old in [plan.replaces.get(fact.id), *plan.displaces.get(fact.id, [])]:
                        if old is not None and pack.memory.bank.is_active(old):  # two new facts may end one edit
                            pack.memory.deactivate(old)
                            ops.append(["deactivate", old])
                first = batch[0]
                report_step = (lambda s, v, n=first, f=facts[0]: on_step(n, f, s, v)) if on_step else None
                results = editor.edit_batch(facts, on_step=report_step)
                ops.append(["edit", facts[0].id] if len(facts) == 1 else ["edit_batch", [f.id for f in facts]])
                for number, fact, result in zip(batch, facts, results):
                    if pack.manifest.routing.auto:
                        variants = add_to_histogram(variants, variant_overlaps(editor, fact))
                    done.append(fact)
                    summary.results.append(result)
                    pause_point("edit")
                    if on_fact:
                        on_fact(number, result)
                if len(done) >= self.checkpoint_every and batch[-1] + 1 < len(plan.add):
                    summary.calibration = _calibrate(unrelated, pack, variants)
                    summary.versions.append(self._commit(pack, loaded, ops, done, before, batch[-1] + 1))
                    ops, done, before = [], [], pack.memory.weight.clone()
            last_version = bool(ops) or self.existing is None or settings_changed
            if last_version:
                summary.calibration = _calibrate(unrelated, pack, variants)
        if last_version:
            summary.versions.append(self._commit(pack, loaded, ops, done, before, len(plan.add)))
        editor.save_protection()  # once committed: the cache is only ever of edits a version holds
        unrelated.save()
        summary.seconds = time.perf_counter() - start
        return summary

    @staticmethod
    def _known_variants(editor: Editor, pack: Pack) -> list[int]:
        """The variants' histogram so far; a pack that has just turned to auto measures its active
        edits' variants once."""
        routing = pack.manifest.routing
        if not routing.auto:
            return []
        if routing.calibration is not None:
            return list(routing.calibration["histogram"])
        variants: list[int] = []
        for fact in pack.active_facts():
            variants = add_to_histogram(variants, variant_overlaps(editor, fact))
        return variants

    def _commit(self, pack: Pack, loaded: LoadedModel, ops, done, before, through: int) -> int:
        record = edit_record(
            "edit", self.message, ops, done, self.plan.replaces, weight_change(before, pack.memory.weight)
        )
        if len(self.plan.add) > self.checkpoint_every:
            record["message"] += f" (facts {through - len(done) + 1}-{through} of {len(self.plan.add)})"
        record["replay"] = replay_info(loaded)
        return commit(pack, self.pack_path, record, self.snapshot_every)


def create_pack(loaded: LoadedModel, options: EditOptions) -> Pack:
    """A new, empty pack: edit layer, background features, permutation and training prefixes, with
    every setting the options leave open at its default for this model (config.py)."""
    model, tokenizer = loaded.model, loaded.tokenizer
    layer = find_edit_layer(model, options.layer)
    k = options.top_k if options.top_k is not None else default_top_k(layer.d_in)
    if k > layer.d_in:
        raise BadInputError(f"top_k {k} is out of range: the edit layer has {layer.d_in} features")
    seed = TopHashConfig().seed if options.seed is None else options.seed
    aggregation = Aggregation(options.aggregation or Aggregation.mean_after_first).value
    prompts = background_prompts()
    features = prompt_features(model, tokenizer, model.get_submodule(layer.path), prompts, aggregation=aggregation)
    pack = new_pack(
        model=model,
        model_id=loaded.model_id,
        revision=loaded.revision,
        layer=layer,
        tophash=TopHashConfig(k=k, seed=seed, aggregation=aggregation, background_prompts=len(prompts)),
        routing=RoutingConfig(auto=True, extra_keys=options.extra_keys is not False),
        training=TrainingConfig(
            optimizer=Optimizer.adam.value,
            lr=default_lr(layer.d_in, Optimizer.adam.value),
            stop_delta=default_stop_delta(Optimizer.adam.value),
            end_answer=True,
            chat=has_chat_template(tokenizer),
            rehearse_chat=True,
            pad_by_form=True,
            prefixed=PREFIXED,
            rehearse=REHEARSE,
            protect=PROTECT,
            mixed_precision=_mixed_precision(options.mixed_precision or MixedPrecision.auto, loaded, layer.path),
        ),
        prefixes=generate_prefixes(model, tokenizer, seed),
        background=features.mean(dim=0),
        permutation=make_permutation(layer.d_in, seed),
        edit_dtype=loaded.dtype,
    )
    pack.manifest.memory_dtype = _memory_dtype(options, loaded.dtype) or MemoryDtype.float32.value
    _update_settings(pack, options, loaded)
    return pack


def _calibrate(unrelated: UnrelatedPrompts, pack: Pack, variants: list[int]) -> Calibration | None:
    """With auto routing, tau for the pack as it is now (calibration.py), set in its manifest."""
    routing = pack.manifest.routing
    if not routing.auto:
        return None
    calibration = calibrate(unrelated.overlaps(), variants, pack.memory.k, RoutingConfig().threshold)
    routing.threshold, routing.calibration = calibration.threshold, calibration.to_json()
    return calibration


def _mixed_precision(asked: MixedPrecision | str, loaded: LoadedModel, layer_path: str) -> str:
    """The stored value of `--mixed-precision`: auto is bf16 for a float32 model whose edit layer sits
    on a device that computes bf16 natively (models.native_bf16), else no."""
    asked = MixedPrecision(asked)
    if asked is not MixedPrecision.auto:
        return asked.value
    device = loaded.model.get_submodule(layer_path).weight.device
    fits = loaded.dtype == "float32" and native_bf16(device)
    return (MixedPrecision.bf16 if fits else MixedPrecision.no).value


def _memory_dtype(options: EditOptions, model_dtype: str | None) -> str | None:
    """The dtype `--memory-dtype` asks for (None: not asked): model means the model's own."""
    if options.memory_dtype is None:
        return None
    asked = MemoryDtype(options.memory_dtype)
    return (model_dtype or MemoryDtype.float32.value) if asked is MemoryDtype.model else asked.value


def _check_fixed_settings(pack: Pack, options: EditOptions) -> None:
    """Layer, k, seed and aggregation shape every stored mask, and whether edits have further keys
    is the same for all of them: an existing pack cannot change these."""
    fixed = {
        "layer": (options.layer, pack.manifest.layer.index),
        "top_k": (options.top_k, pack.manifest.tophash.k),
        "seed": (options.seed, pack.manifest.tophash.seed),
        "extra_keys": (options.extra_keys, pack.manifest.routing.extra_keys),
        "aggregation": (options.aggregation, pack.manifest.tophash.aggregation),
        "memory_dtype": (_memory_dtype(options, pack.manifest.base_model.edit_dtype), pack.manifest.memory_dtype),
    }
    for name, (asked, stored) in fixed.items():
        if asked is not None and asked != stored:
            raise BadInputError(f"{pack.path}: this pack was made with {name} {stored}; it cannot change to {asked}")


def _update_settings(pack: Pack, options: EditOptions, loaded: LoadedModel) -> bool:
    """Apply the settings a pack may change (routing threshold, training); True if any changed."""
    before = (dataclasses.astuple(pack.manifest.routing), dataclasses.astuple(pack.manifest.training))
    if options.threshold == AUTO:
        pack.manifest.routing.auto = True
    elif options.threshold is not None:
        routing = pack.manifest.routing
        routing.threshold, routing.auto, routing.calibration = float(options.threshold), False, None
    training = pack.manifest.training
    optimizer = Optimizer(options.optimizer).value if options.optimizer is not None else training.optimizer
    if optimizer != training.optimizer:
        training.optimizer = optimizer
        training.lr = default_lr(pack.memory.bank.d_ff, optimizer)  # another optimiser's rate is no rate
        training.stop_delta = default_stop_delta(optimizer)  # nor its stop rule
    if options.prefixed is not None and options.prefixed > len(pack.manifest.prefixes):
        available = len(pack.manifest.prefixes)
        raise BadInputError(f"--prefixed {options.prefixed} is out of range: the pack has {available} prefixes")
    for key in TRAINING_AS_GIVEN:
        if getattr(options, key) is not None:
            setattr(training, key, getattr(options, key))
    if options.mixed_precision is not None:
        training.mixed_precision = _mixed_precision(options.mixed_precision, loaded, pack.manifest.layer.path)
    chat = ChatMode(options.chat or ChatMode.auto)
    if chat is not ChatMode.auto:  # auto keeps what the pack was made with
        training.chat = chat is ChatMode.on
    return (dataclasses.astuple(pack.manifest.routing), dataclasses.astuple(pack.manifest.training)) != before


def plan_edits(facts: list[Fact], pack: Pack | None) -> EditPlan:
    """Decide, without a model, what each fact does to the pack (see edit_pack's refresh semantics)."""
    known = {f.id: f for f in pack.facts} if pack else {}
    active = pack.memory.bank.active.tolist() if pack else []
    by_prompt = {f.prompt: f for f, on in zip(pack.facts, active) if on} if pack else {}
    plan, planned_by_prompt = EditPlan(), dict[str, Fact]()
    for fact in facts:
        old = known.get(fact.id)
        if old is not None:
            if (old.prompt, old.target) != (fact.prompt, fact.target):
                raise BadInputError(f"fact id {fact.id!r} is already in the pack with a different prompt or target")
            # Already in the pack: active, or replaced or reverted since (a rerun must not undo that).
            plan.skipped.append(fact.id)
            continue
        earlier = planned_by_prompt.get(fact.prompt)
        if earlier is not None:  # the same prompt twice in one input: the later line wins
            plan.add.remove(earlier)
            plan.replaces.pop(earlier.id, None)
            plan.superseded.append(earlier.id)
        current = by_prompt.get(fact.prompt)
        if current is not None and current.target == fact.target:
            plan.skipped.append(fact.id)
            continue
        plan.add.append(fact)
        planned_by_prompt[fact.prompt] = fact
        if current is not None:
            plan.replaces[fact.id] = current.id
    return plan
