"""``falaj ingest FILE``: land a file for its dataset and, with ``--wait``, see what came of it.

    falaj ingest june.csv                       copied to <home>/landing/<dataset>/june.csv
    falaj ingest june.csv --dataset loans --wait
        ... then follows the broker's log until ingest answers for this file:
        data.ingested (rows in, rows quarantined) or data.rejected (exit 1)

The copy is written under a ``.part`` name and renamed, so the storage source
never reads half a file. An object version is ``sha256:<hex>`` of the bytes
(as ``eventing.storage_source.digest_of`` names it), which is how the wait
knows the answer is about these bytes and not an earlier file of the same
name; landing the same bytes again is no new version, and the wait reports
the answer they had.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from falaj.auth import Role
from falaj.cli.options import (
    PLATFORM_ERRORS,
    PLATFORM_HINT,
    HomeOption,
    JsonOption,
    bars,
    console,
    emit_json,
    fail,
    settings_for,
    user_token,
)
from falaj.context import Paths
from falaj.errors import FalajError
from falaj.events import EventType

CHUNK = 1024 * 1024
#: How the storage source names a version: the SHA-256 of its bytes, with this prefix.
VERSION_PREFIX = "sha256:"
#: Seconds between reads of the broker's log while waiting.
POLL_INTERVAL_S = 0.25
#: Reads the broker's log: the newest events of one type, oldest first.
Events = Callable[[EventType], list[dict[str, Any]]]


@dataclass(frozen=True)
class Landed:
    """A file in the landing folder: where it is, its location as ingest names it, its version."""

    path: Path
    dataset: str
    #: ``file://`` URI of the object, as ``falaj.objects.Buckets.locate`` gives it.
    location: str
    #: ``sha256:<hex>`` of the content: the storage source's ``versionId``.
    object_version: str
    #: False when the landing folder held these very bytes already.
    copied: bool


def land(source: Path, landing: Path, dataset: str, *, advance: Callable[[int], None]) -> Landed:
    """Copy ``source`` into ``landing/<dataset>/``; write then rename, as the source expects."""
    folder = landing / dataset
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    digest = hashlib.sha256()
    partial = folder / f".{source.name}.part"
    with source.open("rb") as reader, partial.open("wb") as writer:
        while chunk := reader.read(CHUNK):
            digest.update(chunk)
            writer.write(chunk)
            advance(len(chunk))
    version = VERSION_PREFIX + digest.hexdigest()
    copied = not (target.is_file() and VERSION_PREFIX + _sha256(target) == version)
    if copied:
        partial.replace(target)
    else:
        partial.unlink()
    location = landing.resolve().joinpath(dataset, source.name).as_uri()
    return Landed(target, dataset, location, version, copied)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as reader:
        while chunk := reader.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def outcome_of(landed: Landed, events: Events) -> dict[str, Any] | None:
    """The broker's answer about these bytes (this object version), or None while there is none."""
    for event_type in (EventType.DATA_INGESTED, EventType.DATA_REJECTED):
        for event in events(event_type):
            data = event.get("data") or {}
            if data.get("location") == landed.location and (
                data.get("object_version") == landed.object_version
            ):
                return event
    return None


def await_outcome(
    landed: Landed,
    events: Events,
    *,
    timeout_s: float,
    pause: Callable[[], None],
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while (found := outcome_of(landed, events)) is None:
        if time.monotonic() > deadline:
            raise FalajError(
                f"no data.ingested or data.rejected for {landed.path.name} within {timeout_s:g} s"
            )
        pause()
    return found


def ingest(
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, readable=True, help="the file to ingest"),
    ],
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset", "-d", help="its dataset (default: the feature repository's only one)"
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="follow until it is ingested or rejected")
    ] = False,
    timeout: Annotated[
        float, typer.Option(min=0.0, help="with --wait: give up after this many seconds")
    ] = 300.0,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Land a file in its dataset's landing folder; with --wait, report what ingest made of it."""
    from falaj.client import PlatformClient
    from falaj.feature_repo import load_repo

    settings = settings_for(home)
    try:
        repo = load_repo(settings)
    except FalajError as exc:
        raise fail(
            str(exc), hint="fix the feature repository; 'falaj features check' lists every problem"
        ) from None
    known = ", ".join(repo.datasets) or "none"
    if dataset is None:
        if len(repo.datasets) != 1:
            raise fail(
                f"which dataset is {file.name} of? the feature repository has {known}",
                hint="pass --dataset NAME",
            )
        [dataset] = repo.datasets
    elif dataset not in repo.datasets:
        raise fail(
            f"no dataset {dataset!r} in the feature repository {repo.path}; it has {known}",
            hint=f"pass --dataset with one of {known}, or declare datasets/{dataset}.yaml",
        )
    paths = Paths(settings.resolved_home)
    token = None
    if wait:  # before a byte is copied: a wait that nothing could answer is refused
        try:
            token = user_token(paths, Role.VIEWER)
        except FalajError as exc:
            raise fail(str(exc), hint=PLATFORM_HINT) from None

    progress = bars(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        as_json=as_json,
        transient=True,
    )
    with progress:
        task = progress.add_task(f"landing {escape(file.name)}", total=file.stat().st_size)
        try:
            landed = land(file, paths.landing, dataset, advance=lambda n: progress.advance(task, n))
        except OSError as exc:
            raise fail(
                f"cannot land {file} in {paths.landing / dataset}: {exc}",
                hint="check that the folder is writable and has room, or pass --home",
            ) from None
        outcome = None
        if token is not None:
            progress.update(
                task, description=f"waiting for ingest of {escape(file.name)}", total=None
            )
            try:
                with PlatformClient.from_settings(settings, token=token) as client:
                    outcome = await_outcome(
                        landed,
                        client.events,
                        timeout_s=timeout,
                        pause=lambda: time.sleep(POLL_INTERVAL_S),
                    )
            except PLATFORM_ERRORS as exc:
                raise fail(
                    f"{exc}; the file is landed at {landed.path}",
                    hint="'falaj status' shows whether the storage source and ingest run; "
                    "wait longer with --timeout",
                ) from None
    _report(landed, outcome, as_json=as_json)


def _report(landed: Landed, outcome: dict[str, Any] | None, *, as_json: bool) -> None:
    kind = "landed" if outcome is None else str(outcome["type"]).rsplit(".", 1)[-1]
    data: dict[str, Any] = {} if outcome is None else dict(outcome.get("data") or {})
    if kind == "rejected":
        raise fail(
            f"{landed.path.name} was rejected: {data.get('reason')}",
            hint=f"the file is kept at {data.get('quarantine_location')}; fix it and ingest "
            "it again",
        )
    if as_json:
        emit_json(
            {
                "outcome": kind,
                "dataset": landed.dataset,
                "path": str(landed.path),
                "location": landed.location,
                "object_version": landed.object_version,
                "copied": landed.copied,
                "result": data or None,
            }
        )
        return
    same = "" if landed.copied else " (the same bytes were there already)"
    console.print(
        f"landed {escape(landed.path.name)} for dataset {landed.dataset} at "
        f"{escape(str(landed.path))}{same}"
    )
    if kind == "ingested":
        quarantined = int(data.get("rows_quarantined", 0))
        console.print(
            f"ingested {data.get('rows_ingested')} of {data.get('rows_total')} rows"
            + (
                f"; {quarantined} quarantined, with their reasons in "
                f"{escape(str(data.get('quarantine_location')))}"
                if quarantined
                else ""
            )
        )
