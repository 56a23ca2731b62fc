"""The annotation pipeline: scenes -> clips -> metric depth, cameras, masks, tracks, QC -> shard records.

:class:`Annotator` turns one loaded :class:`~annotation.clip.Clip` into a :class:`~d4s.data.schema.ClipRecord`
or a rejection reason; :func:`run` drives a rank's share of a dataset through it into shards, resumably.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from annotation.align import (
    align_to_oracle,
    from_space,
    mask_labels,
    median_scale,
    sparse_depth_from_tracks,
    to_space,
    trajectory_scale,
)
from annotation.clip import Clip
from annotation.config import AnnotateConfig, ClipWindow
from annotation.errors import InputError
from annotation.estimators import make_depth_estimator, make_pose_estimator
from annotation.estimators.flow import DISFlow
from annotation.quality import assess, dynamic_mask_from_flow, filter_depth, mask_flow_pairs
from annotation.readers import Reader, Scene
from annotation.tracks import flow_tracks
from annotation.writer import PROGRESS_DIR, Journal, ShardWriter, remove_partial_shards, write_index
from d4s.data.schema import ClipMeta, ClipRecord, encode_record
from d4s.geometry.cameras import resize_intrinsics

log = logging.getLogger("annotation")


class Rejected(Exception):
    """A clip that loaded fine but fails quality control or cannot be made metric; the message is the reason."""


class AbortRun(RuntimeError):
    """Clip after clip fails for the same unexpected reason: the setup is broken, so the run stops (resumable)."""


def _open(reader: Reader, name: str, config: AnnotateConfig) -> tuple[Scene, list[list[int]]]:
    """Open a scene and cut it into clip windows; a scene shorter than one clip is rejected."""
    scene = reader.open_scene(name)
    windows = clip_windows(scene.num_frames, config.clips)
    if not windows:
        span = (config.clips.frames_per_clip - 1) * config.clips.frame_step + 1
        raise Rejected(f"scene shorter than one clip ({scene.num_frames} < {span} frames)")
    return scene, windows


def clip_windows(num_frames: int, window: ClipWindow) -> list[list[int]]:
    """Frame indices of every clip of a scene of ``num_frames`` frames (only whole clips)."""
    span = (window.frames_per_clip - 1) * window.frame_step + 1
    return [
        list(range(start, start + span, window.frame_step)) for start in range(0, num_frames - span + 1, window.stride)
    ]


def _resized_size(height: int, width: int, max_short_side: int | None) -> tuple[int, int]:
    if max_short_side is None or min(height, width) <= max_short_side:
        return height, width
    factor = max_short_side / min(height, width)
    return round(height * factor), round(width * factor)


def _resize_maps(maps: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    """Resize ``[T, H, W(, C)]`` maps to ``size = (H', W')`` frame by frame with OpenCV."""
    return np.stack([cv2.resize(m, size[::-1], interpolation=interpolation) for m in maps])


def load_clip(scene: Scene, indices: Sequence[int], config: AnnotateConfig) -> Clip:
    """Read one window of ``scene`` with the per-frame data the configuration needs, resized if asked."""
    frames = scene.frames(indices)
    if frames.shape[1:] != (scene.height, scene.width, 3):
        raise InputError(
            f"{scene.dataset}/{scene.name}",
            f"frames of shape {frames.shape[1:]}, expected {(scene.height, scene.width, 3)}",
        )
    clip = Clip(
        dataset=scene.dataset,
        scene=scene.name,
        frame_indices=list(indices),
        fps=scene.fps / config.clips.frame_step,
        frames=frames,
        K=np.asarray(scene.K)[list(indices)].astype(np.float64),
        timestamps=np.asarray(scene.timestamps)[list(indices)].astype(np.float64),
        metric=scene.metric,
        c2w=None if scene.c2w is None else np.asarray(scene.c2w)[list(indices)].astype(np.float64),
        caption=scene.caption,
        licence=scene.licence,
    )
    if scene.has_depth and "gt" in (config.depth.name, config.alignment.oracle):
        clip.depth = scene.depth(indices).astype(np.float32)
    if scene.has_dynamic_mask and config.masks == "gt":
        clip.dynamic_mask = scene.dynamic_mask(indices).astype(bool)
    if scene.has_tracks and (config.tracks == "gt" or config.alignment.oracle == "tracks"):
        clip.track_xyz, clip.track_visible = scene.tracks(indices)
    size = _resized_size(scene.height, scene.width, config.clips.max_short_side)
    if size != (scene.height, scene.width):
        clip.frames = _resize_maps(clip.frames, size, cv2.INTER_AREA)
        clip.K = resize_intrinsics(torch.from_numpy(clip.K), (scene.height, scene.width), size).numpy()
        if clip.depth is not None:
            clip.depth = _resize_maps(clip.depth, size, cv2.INTER_NEAREST_EXACT)
        if clip.dynamic_mask is not None:
            clip.dynamic_mask = _resize_maps(clip.dynamic_mask.astype(np.uint8), size, cv2.INTER_NEAREST_EXACT).astype(
                bool
            )
    return clip


@dataclass
class _Geometry:
    """Intermediate result: metric depth and cameras of a clip, and how they were obtained."""

    depth: np.ndarray
    c2w: np.ndarray
    K: np.ndarray
    depth_source: str
    pose_source: str
    alignment: dict | None = None


class Annotator:
    """Turns loaded clips into shard records according to an :class:`AnnotateConfig`."""

    def __init__(self, config: AnnotateConfig):
        self.config = config
        self.depth_estimator = make_depth_estimator(config.depth.name, **config.depth.options)
        self.pose_estimator = make_pose_estimator(config.poses.name, **config.poses.options)
        self.megasam = (
            None if config.megasam is None else make_pose_estimator(config.megasam.name, **config.megasam.options)
        )
        self.reference = (
            None
            if config.metric_reference is None
            else make_depth_estimator(config.metric_reference.name, **config.metric_reference.options)
        )
        self.flow = DISFlow(config.flow_preset)
        if config.alignment.oracle == "megasam" and (self.megasam is None or self.reference is None):
            raise ValueError(
                "alignment.oracle 'megasam' needs both 'megasam' and 'metric_reference' estimators configured"
            )

    def _metric_megasam(self, clip: Clip) -> tuple[np.ndarray, np.ndarray, float]:
        """MegaSaM depth and cameras made metric against the metric reference: ``(depth, c2w, scale)``."""
        estimate = self.megasam.estimate(clip)
        reference = self.reference.estimate(clip)
        if not reference.metric or reference.space != "depth":
            raise ValueError(f"metric_reference {reference.source!r} must give metric depth")
        scale = median_scale(estimate.depth.values, reference.values)
        c2w = estimate.c2w.copy()
        c2w[:, :3, 3] *= scale  # the same factor as the depth (Appendix B)
        return estimate.depth.values * scale, c2w, scale

    def _oracle(self, clip: Clip, c2w: np.ndarray, megasam_depth: np.ndarray | None) -> tuple[np.ndarray, str]:
        """The metric depth ``[T, H, W]`` Algorithm 1 aligns to, and its name."""
        kind = self.config.alignment.oracle
        if kind == "gt":
            if clip.depth is None:
                raise Rejected("alignment oracle 'gt' but the dataset has no depth")
            return clip.depth, "gt"
        if kind == "tracks":
            if clip.track_xyz is None:
                raise Rejected("alignment oracle 'tracks' but the clip has no tracks")
            return sparse_depth_from_tracks(clip.track_xyz, clip.track_visible, clip.K, c2w, *clip.size), "tracks"
        return megasam_depth, "megasam"

    def _geometry(self, clip: Clip) -> _Geometry:
        """Metric depth and cameras for the clip (paper Appendix B)."""
        poses = self.pose_estimator.estimate(clip)
        c2w, K, metric_poses, pose_source = poses.c2w, poses.K, poses.metric, poses.source
        estimate = self.depth_estimator.estimate(clip)
        megasam_depth = None
        if self.config.alignment.oracle == "megasam":
            megasam_depth, megasam_c2w, _ = self._metric_megasam(clip)
            if not metric_poses and pose_source == "megasam":
                c2w = megasam_c2w
            elif not metric_poses:
                c2w = c2w.copy()
                c2w[:, :3, 3] *= trajectory_scale(c2w, megasam_c2w)  # rescale the dataset's own poses
            if not metric_poses:
                metric_poses, pose_source = True, f"{pose_source}+metric-scale"
        if not metric_poses:
            raise Rejected("poses are not metric and no metric reference is configured (set alignment.oracle: megasam)")
        if estimate.metric:
            depth = from_space(estimate.values, estimate.space)
            return _Geometry(depth.astype(np.float32), c2w, K, estimate.source, pose_source)
        oracle, oracle_name = self._oracle(clip, c2w, megasam_depth)
        settings = self.config.alignment
        relative, space = estimate.values, estimate.space
        if settings.space not in ("auto", space):  # asked to align in the other space: invert the relative map
            relative, space = to_space(relative, "disparity"), settings.space  # 1/x either way
        min_fraction = settings.min_oracle_fraction
        if min_fraction is None:
            min_fraction = 0.0 if oracle_name == "tracks" else 0.5  # sparse oracles cover few pixels of a mask
        labels = mask_labels(clip.frames, settings.masks, settings.num_segments, settings.cell)
        depth, results = align_to_oracle(
            relative,
            oracle,
            labels,
            space,
            settings.robust,
            settings.min_oracle_pixels,
            min_fraction,
            settings.per_frame,
            settings.seed,
        )
        alignment = {"oracle": oracle_name, "frames": [r.as_dict() for r in results]}
        alignment["depth_absrel"] = float(np.nanmean([r.depth_absrel for r in results]))
        return _Geometry(depth, c2w, K, f"{estimate.source}+aligned", pose_source, alignment)

    def process(self, clip: Clip) -> ClipRecord:
        """Annotate one clip; raises :class:`Rejected` (QC) or :class:`InputError` (bad input)."""
        config = self.config
        try:
            geometry = self._geometry(clip)
        except ValueError as error:  # too few anchors, static camera for scale, ...
            raise Rejected(f"metric alignment failed: {error}") from error
        dynamic = clip.dynamic_mask
        if config.masks == "flow":
            pairs = mask_flow_pairs(clip.num_frames, config.quality.flow_gap)
            flows = self.flow.pairs(clip.frames, pairs)
            dynamic = dynamic_mask_from_flow(pairs, flows, geometry.depth, geometry.K, geometry.c2w, config.quality)
        depth, consistency = geometry.depth, None
        if config.reprojection_filter:
            depth, consistency = filter_depth(depth, geometry.K, geometry.c2w, dynamic, config.quality)
        absrel = None if geometry.alignment is None else geometry.alignment["depth_absrel"]
        report = assess(geometry.c2w, depth, consistency, absrel, config.quality)
        if not report.accepted:
            raise Rejected(report.reason)
        xyz, visible = clip.track_xyz, clip.track_visible
        if config.tracks == "flow":
            xyz, visible = flow_tracks(
                *self.flow.forward_backward(clip.frames), depth, geometry.K, geometry.c2w, dynamic, config.query_stride
            )
        elif config.tracks == "none":
            xyz = visible = None
        meta = ClipMeta(
            dataset=clip.dataset,
            scene=clip.scene,
            frame_indices=clip.frame_indices,
            fps=clip.fps,
            height=clip.size[0],
            width=clip.size[1],
            pose_source=geometry.pose_source,
            depth_source=geometry.depth_source,
            metric=True,
            alignment=geometry.alignment,
            quality=report.scores,
            caption=clip.caption,
            licence=clip.licence,
        )
        return ClipRecord(
            key=clip.key,
            frames=clip.frames,
            K=geometry.K.astype(np.float32),
            c2w=geometry.c2w.astype(np.float32),
            timestamps=clip.timestamps,
            meta=meta,
            depth=depth,
            dynamic_mask=dynamic,
            track_xyz=xyz,
            track_visible=visible,
        ).validate()


def run(
    config: AnnotateConfig,
    reader: Reader,
    scenes: Sequence[tuple[str, str]],
    out: Path,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> Journal:
    """Annotate this rank's share of ``scenes`` (``(name, split)`` pairs) into shards under ``out``.

    Rank ``r`` of ``world_size`` takes every ``world_size``-th scene of the list ordered by split and name.
    Resumes from the rank's journal; returns the final journal (counts, shards, skipped clips with reasons).
    """
    out = Path(out)
    journal_path = out / PROGRESS_DIR / f"{config.dataset}-r{rank:03d}-of-{world_size:03d}.json"
    others = [
        p.name
        for p in (out / PROGRESS_DIR).glob(f"{config.dataset}-r*-of-*.json")
        if not p.name.endswith(f"-of-{world_size:03d}.json")
    ]
    if others:
        raise ValueError(
            f"{out} holds a run with another world size ({others[0]}); resume it with that world size or use a new --out"
        )
    order = {split: i for i, split in enumerate(("train", "val", "test"))}
    items = sorted(scenes, key=lambda item: (order.get(item[1], len(order)), item[1], item[0]))[rank::world_size]
    work = hashlib.sha256(json.dumps([config.digest(), items]).encode()).hexdigest()[:16]
    state = Journal.load(journal_path, work)  # a resumed run must see the same settings and the same scene list
    if state.done:
        log.info("%s: rank %d already finished (%d clips); nothing to do", out, rank, state.written)
        write_index(out, config.dataset)
        return state
    removed = remove_partial_shards(out, config.dataset, rank)
    if removed or state.shards or state.position != [0, 0]:
        log.info(
            "resuming rank %d at scene %d, clip %d (%d unfinished shard(s) removed)", rank, *state.position, removed
        )
    annotator = Annotator(config)
    writer = ShardWriter(out, config.dataset, rank, config.shard_max_samples, config.shard_max_bytes, len(state.shards))

    def checkpoint(entry: dict | None, position: list[int]) -> None:
        if entry is not None:
            state.shards.append(entry)
        state.position = position
        state.save(journal_path)

    def skip(counter: dict[str, int], what: str, file: str, reason: str) -> None:
        log.warning("skipped %s: %s: %s", what, file, reason)
        counter[reason] = counter.get(reason, 0) + 1
        state.skipped.append({"what": what, "file": file, "reason": reason})

    bar = tqdm(
        total=len(items),
        initial=state.position[0],
        desc=f"{config.dataset} r{rank}",
        unit="scene",
        disable=not progress,
    )
    unexpected_in_a_row = 0

    def attempt(what: str, name: str, action):
        """Run ``action``; a failure is logged, counted and skipped (``None``). Too many unexpected errors in a
        row (not bad input, not QC) mean a broken setup: stop instead of skipping everything."""
        nonlocal unexpected_in_a_row
        try:
            result = action()
        except InputError as error:
            skip(state.failed, what, error.path, error.reason)
        except Rejected as rejection:
            skip(state.rejected, what, f"{config.dataset}/{name}", str(rejection))
        except MemoryError:
            raise
        except Exception as error:
            log.debug("unexpected error in %s", what, exc_info=True)
            skip(state.failed, what, f"{config.dataset}/{name}", f"{type(error).__name__}: {error}")
            unexpected_in_a_row += 1
            if unexpected_in_a_row >= config.max_consecutive_errors:
                raise AbortRun(
                    f"{unexpected_in_a_row} unexpected errors in a row, the last: {type(error).__name__}: {error}; "
                    f"fix the setup and rerun to resume (see {out / PROGRESS_DIR})"
                ) from error
        else:
            return result
        return None

    split_open = None
    for item_index in range(state.position[0], len(items)):
        name, split = items[item_index]
        if split_open is not None and split != split_open:
            checkpoint(writer.close(), [item_index, 0])
        split_open = split
        opened = attempt(f"scene {name}", name, lambda name=name: _open(reader, name, config))
        if opened is None:
            bar.update()
            continue
        scene, windows = opened
        first = state.position[1] if item_index == state.position[0] else 0
        for clip_index in range(first, len(windows)):
            indices = windows[clip_index]
            sample = attempt(
                f"clip {name}@{indices[0]}",
                name,
                lambda scene=scene, indices=indices: encode_record(
                    annotator.process(load_clip(scene, indices, config))
                ),
            )
            if sample is None:
                continue
            unexpected_in_a_row = 0
            state.written += 1
            closed = writer.write(split, sample)
            if closed is not None:
                checkpoint(closed, [item_index, clip_index + 1])
        bar.update()
    bar.close()
    state.done = True
    checkpoint(writer.close(), [len(items), 0])
    write_index(out, config.dataset)
    return state


def summary_table(journal: Journal, max_reasons: int = 15) -> str:
    """A plain-text table of clips written, rejected and failed by reason (the most frequent reasons first;
    the rest are summed up in one row, and listed in the journal)."""
    rows = [("written", "", journal.written)]
    for outcome, counter in (("rejected", journal.rejected), ("failed", journal.failed)):
        ranked = sorted(counter.items(), key=lambda item: (-item[1], item[0]))
        rows += [(outcome, reason, n) for reason, n in ranked[:max_reasons]]
        if len(ranked) > max_reasons:
            rows.append(
                (outcome, f"({len(ranked) - max_reasons} other reasons)", sum(n for _, n in ranked[max_reasons:]))
            )
    width = max([len(reason) for _, reason, _ in rows] + [6])
    lines = [f"{'outcome':<9} {'reason':<{width}} {'count':>6}", "-" * (width + 17)]
    lines += [f"{outcome:<9} {reason:<{width}} {n:>6}" for outcome, reason, n in rows]
    return "\n".join(lines)
