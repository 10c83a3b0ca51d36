"""Edit packs on the Hugging Face Hub, shared the way PEFT adapters are: one model repo per pack.

Version N of a pack is pushed as one commit, tagged `vN`, that holds the version flat:
`manifest.json`, the four data files, `README.md` (the model card) and `versions/*.json` (the
records of versions 1 to N, so `memoir log` and replay work on a pulled pack). Pushing again pushes
only the versions the repo does not have yet.

Reading goes through huggingface_hub's cache (`snapshot_download`), so HF_HOME, HF_ENDPOINT,
HF_TOKEN and HF_HUB_OFFLINE behave as in other Hugging Face tools. Only the pack's own files are
downloaded (JSON, JSONL, safetensors, the card), and the pulled folder is then read like any local
pack: manifest validated against the schema first, every file checked against its sha256.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .card import model_card
from .errors import BadInputError, HubError, PackBusyError, PackError
from .pack import CARD_FILE, MANIFEST, Pack, write_data_files
from .refs import HubRef, PackRef, parse_ref
from .store import WriteOptions, head_version, pack_lock, read_record, write_atomic

TAG = re.compile(r"^v(\d+)$")
PACK_FILES = ["manifest.json", "README.md", "*.safetensors", "facts.jsonl", "versions/*.json"]
EVAL_FILE = "eval.json"


def resolve(ref: PackRef | HubRef, token: str | None = None) -> tuple[PackRef, str | None]:
    """A local pack reference for `ref`, downloading it first if it names a Hub repo; with the
    Hub reference as the pack's display name (None for a local pack)."""
    if isinstance(ref, PackRef):
        return ref, None
    try:
        return PackRef(download(ref, token)), str(ref)
    except HubError as error:  # perhaps a mistyped local folder: say both
        raise HubError(f"no pack folder {str(ref)!r} here, and on the Hub: {error.message}") from None


def download(ref: HubRef, token: str | None = None, into: Path | None = None) -> Path:
    """The pack's files at `ref`, in the Hugging Face cache (downloaded if not there yet), or
    downloaded into the folder `into`."""
    from huggingface_hub import snapshot_download

    with hub_errors(str(ref), token):
        folder = Path(
            snapshot_download(
                ref.repo_id, revision=ref.revision, allow_patterns=PACK_FILES, token=token, local_dir=into
            )
        )
    if not (folder / MANIFEST).is_file():
        raise HubError(f"{ref}: not a memoir pack (the repo has no {MANIFEST})")
    return folder


def pull(text: str, to: Path | None = None, token: str | None = None) -> Path:
    """Download a pack, checked in full, into the cache or, if given, the new folder `to`; returns its folder.

    A pack for `to` is downloaded into a staging folder beside it and checked there, so a bad pack
    never appears at `to`.
    """
    from .store import load_pack

    ref = parse_ref(text)
    if not isinstance(ref, HubRef):
        raise BadInputError(f"{text}: not a Hub repo id (expected user/pack, user/pack@v3 or user/pack@<commit>)")
    if to is None:
        folder = download(ref, token)
        load_pack(folder)  # schema, checksums, shapes: a bad pack is refused before anyone uses it
        return folder
    if to.exists() and any(to.iterdir()):
        raise PackError(f"{to} exists and is not empty; refusing to overwrite it")
    to.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{to.name}.pulling-", dir=to.parent))
    try:
        load_pack(download(ref, token, into=staging))
        if to.exists():
            to.rmdir()  # empty, checked above
        os.replace(staging, to)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return to


@dataclass
class PushResult:
    repo_id: str
    pushed: list[int]  # versions pushed now, each a commit tagged vN
    already: list[int]  # versions the repo had
    url: str

    def to_json(self) -> dict:
        return {"repo_id": self.repo_id, "url": self.url, "pushed": self.pushed, "already_on_hub": self.already}


def push(
    pack_path: Path,
    repo_id: str,
    versions: Callable[[int], Iterator[Pack]],
    private: bool = False,
    token: str | None = None,
    message: str | None = None,
    license: str | None = None,
    on_version: Callable[[int], None] | None = None,
) -> PushResult:
    """Push every version of the local pack that the repo does not have yet, oldest first.

    `versions(n)` yields the pack's versions from n to its current one (history.versions_from:
    each kept one read, the others replayed once each).
    """
    from huggingface_hub import HfApi

    if not isinstance(parse_ref(repo_id), HubRef) or "@" in repo_id:
        raise BadInputError(f"{repo_id}: not a Hub repo id (expected user/name)")
    pack_path = Path(pack_path)
    head = head_version(pack_path)
    api = HfApi(token=token)
    with hub_errors(repo_id, token):
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        remote = sorted(int(m[1]) for m in (TAG.match(t.name) for t in api.list_repo_refs(repo_id).tags) if m)
    if remote:
        _check_same_history(api, repo_id, pack_path, remote[-1], head, token)
        license = license or _remote_license(repo_id, f"v{remote[-1]}", token)
    pushed, start = [], (remote[-1] if remote else 0) + 1
    for pack in versions(start):
        number = pack.version
        if number is None:
            raise PackError(f"{pack.name}: only committed versions can be pushed")
        with tempfile.TemporaryDirectory() as folder:
            export_version(pack, pack_path, number, Path(folder), license)
            summary = read_record(pack_path, number)["message"]
            with hub_errors(repo_id, token):
                commit = api.upload_folder(
                    repo_id=repo_id,
                    folder_path=folder,
                    commit_message=f"v{number}: {message or summary}",
                    commit_description=f"memoir pack version {number}: {summary}",
                )
                api.create_tag(repo_id, tag=f"v{number}", revision=commit.oid, tag_message=summary)
        pushed.append(number)
        if on_version:
            on_version(number)
    return PushResult(repo_id, pushed, remote, str(url))


def export_version(pack: Pack, pack_path: Path, number: int, folder: Path, license: str | None = None) -> None:
    """Write version `number` flat into `folder`: what one Hub commit holds."""
    record = read_record(pack_path, number)
    files = write_data_files(pack, folder)
    if files != record["manifest"]["files"]:
        raise PackError(f"{pack_path}: version {number}'s files do not match its record; not pushing it")
    (folder / MANIFEST).write_text(json.dumps(record["manifest"], indent=2) + "\n")
    (folder / CARD_FILE).write_text(model_card(pack, license=license, scores=known_scores(pack_path, number)))
    (folder / "versions").mkdir()
    for n in range(1, number + 1):
        (folder / "versions" / f"{n:06d}.json").write_text(json.dumps(read_record(pack_path, n), indent=1) + "\n")


def remember_scores(pack_path: Path, version: int, summary: dict, data: str | None) -> None:
    """Keep a version's latest `memoir eval` scores beside the pack, for its model card. They are a
    convenience: while another process writes the pack they are not kept (and never half-written)."""
    record = {"version": version, "data": data, "records": summary["records"], "scores": summary["scores"]}
    try:
        with pack_lock(pack_path, WriteOptions(wait=False)):
            write_atomic(Path(pack_path) / EVAL_FILE, json.dumps(record, indent=2) + "\n")
    except PackBusyError:
        return


def known_scores(pack_path: Path, version: int) -> dict | None:
    file = Path(pack_path) / EVAL_FILE
    try:
        record = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("version") == version else None


def _check_same_history(api, repo_id: str, pack_path: Path, last: int, head: int, token) -> None:
    """Refuse to push onto a repo whose versions are not this pack's."""
    from huggingface_hub import hf_hub_download

    if last > head:
        raise HubError(
            f"{repo_id} has version {last}, but {pack_path} only goes to version {head}: "
            "pull it instead, or push to another repo"
        )
    with hub_errors(repo_id, token):
        remote_manifest = json.loads(
            Path(hf_hub_download(repo_id, MANIFEST, revision=f"v{last}", token=token)).read_text()
        )
    if remote_manifest.get("files") != read_record(pack_path, last)["manifest"]["files"]:
        raise HubError(
            f"{repo_id}@v{last} is not version {last} of {pack_path} (their files differ): "
            "the two histories diverged; push to another repo"
        )


def _remote_license(repo_id: str, revision: str, token) -> str | None:
    """The license the repo's card already declares, so it need not be repeated at every push."""
    from huggingface_hub import ModelCard, hf_hub_download

    with hub_errors(repo_id, token):
        card = Path(hf_hub_download(repo_id, CARD_FILE, revision=revision, token=token)).read_text()
    return ModelCard(card).data.get("license")


@contextmanager
def hub_errors(what: str, token: str | None = None) -> Iterator[None]:
    """huggingface_hub's exceptions as one clear line each (exit code 6)."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except GatedRepoError:
        raise HubError(
            f"{what}: the repository is gated: request access on its Hub page, then use a token that has it",
            option="token",
            remedy="(or set HF_TOKEN)",
        ) from None
    except RepositoryNotFoundError:
        message = f"{what}: repository not found on {constants.ENDPOINT}"
        if token or get_token():
            raise HubError(message) from None
        raise HubError(message, option="token", remedy="if it is private (or set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise HubError(f"{what}: the repository has no such revision (tags are v1, v2, ...)") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as error:
        if constants.HF_HUB_OFFLINE:
            raise HubError(
                f"{what}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE "
                "is set; go online once to download it"
            ) from None
        raise HubError(
            f"{what}: cannot reach the Hub at {constants.ENDPOINT} and it is not cached "
            f"({_cause(error)}); check the network or HF_ENDPOINT and retry"
        ) from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status == 401:
            raise HubError(
                f"{what}: the Hub refused the request (401): it needs a valid token with write access",
                option="token",
                remedy="(or set HF_TOKEN)",
            ) from None
        raise HubError(f"{what}: the Hub answered {status}: {str(error).splitlines()[0]}; retry later") from None
    except OSError as error:
        raise HubError(
            f"{what}: cannot reach the Hub at {constants.ENDPOINT} ({error}); check the network or "
            "HF_ENDPOINT and retry"
        ) from None
    except _transport_errors() as error:  # the HTTP client's own network errors (connection refused, timeouts)
        raise HubError(
            f"{what}: cannot reach the Hub at {constants.ENDPOINT} ({type(error).__name__}: {error}); "
            "check the network or HF_ENDPOINT and retry"
        ) from None


def _transport_errors() -> tuple[type[Exception], ...]:
    """The HTTP client's TransportError: huggingface_hub 1.x talks through httpx, 2.x through httpx2."""
    classes = []
    for name in ("httpx", "httpx2"):
        try:
            classes.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(classes)


def _cause(error: Exception) -> str:
    cause = error.__cause__ or error.__context__
    return f"{type(cause).__name__}" if cause else str(error).splitlines()[0]
