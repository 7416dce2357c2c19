"""The two preprocessing pipelines (``standard`` and ``tutorial``), their configurations, and ``preprocess_scan``.

A configuration is a frozen dataclass with every default in one place; ``to_dict`` and
``config_from_dict`` round-trip it through JSON so it can live in a cache and a checkpoint and be
re-applied to a new scan at prediction time.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import nibabel as nib
import numpy as np

from brainage.errors import InputError
from brainage.io.images import load_scan
from brainage.preprocess import stages
from brainage.preprocess.adequacy import measure
from brainage.preprocess.external_mask import external_mask_path, read_external_mask
from brainage.preprocess.qc import registration_score
from brainage.preprocess.template import MNI_BRAIN_CENTER, template_grid, template_on_grid

#: Bump when a stage's code changes what it computes, so old cache entries are not reused.
PIPELINE_VERSION = 1
#: The stages whose CPU seconds every prepared scan records (``PreparedScan.seconds``).
STAGES = ("load", "bias", "strip", "register", "rigid", "resample", "normalise", "qc")


@dataclass(frozen=True)
class PipelineConfig:
    """Fields shared by every pipeline: the output grid, storage type and QC threshold."""

    name: ClassVar[str]
    #: Fields added after caches and checkpoints were written, each with the value that computes
    #: what the code did before the field existed. A field at that value is left out of
    #: ``to_dict`` (so of every digest), and a dict without it reads back as that value: an old
    #: cache keeps its keys and an old checkpoint its preprocessing.
    LEGACY: ClassVar[dict[str, Any]] = {}
    #: Fields renamed since caches were first keyed: their name now → the name digests still use,
    #: so that a rename keeps every cache key; :func:`config_from_dict` reads the old names too.
    OLD_FIELD_NAMES: ClassVar[dict[str, str]] = {}
    #: The pipeline's name before it was renamed, which its digests still use (None: never renamed).
    old_name: ClassVar[str | None] = None
    #: Fields that change only the repeats of a session (whose cache keys hold them), not a scan
    #: prepared on its own: left out of :meth:`volume_digest`.
    SESSION_FIELDS: ClassVar[tuple[str, ...]] = ()
    shape: tuple[int, int, int]
    voxel_size: float
    dtype: str
    qc_threshold: float | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that :func:`config_from_dict` turns back into an equal config."""
        values = {key: value for key, value in asdict(self).items() if key not in self.LEGACY or value != self.LEGACY[key]}
        return {"pipeline": self.name, **values}

    def digest(self, *names: str) -> str:
        """A short hash of the fields ``names`` (all fields if none) and the pipeline version."""
        values = self.to_dict()
        chosen = {self.OLD_FIELD_NAMES.get(key, key): values[key] for key in (names or values) if key in values}
        text = json.dumps({"version": PIPELINE_VERSION, **chosen, "pipeline": self.old_name or self.name}, sort_keys=True)
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    def volume_digest(self) -> str:
        """Hash of everything that changes the stored volume of a scan prepared on its own (all
        fields but the QC threshold and :attr:`SESSION_FIELDS`)."""
        unkeyed = ("qc_threshold", *self.SESSION_FIELDS)
        return self.digest(*(field.name for field in fields(self) if field.name not in unkeyed))

    @property
    def affine(self) -> np.ndarray:
        """Voxel → world (RAS mm) matrix of the output grid."""
        raise NotImplementedError


@dataclass(frozen=True)
class TutorialConfig(PipelineConfig):
    """The tutorial's preprocessing (the ``tutorial`` pipeline, ``seed`` before: its old name is
    still accepted and its caches keep their keys), reproduced faithfully for side-by-side comparison.

    nibabel load, sform set from qform, nilearn ``resample_img`` of the whole raw volume onto a
    ``voxel_size``-mm grid with zero translation (it covers world x, y, z ≥ 0 only, which may cut
    the head: the tutorial's flaw, kept), z-score over the whole volume. No QC flagging by default
    (the tutorial had none); the registration score is still recorded.
    """

    name: ClassVar[str] = "tutorial"
    old_name: ClassVar[str | None] = "seed"
    shape: tuple[int, int, int] = (64, 64, 64)
    voxel_size: float = 4.0
    dtype: str = "float32"
    qc_threshold: float | None = None

    @property
    def affine(self) -> np.ndarray:
        return np.diag([self.voxel_size] * 3 + [1.0])


@dataclass(frozen=True)
class StandardConfig(PipelineConfig):
    """Reorient → optional N4 bias-field correction (``bias_field``) → skull strip → affine registration to MNI152 → resample →
    robust z-score inside the brain.

    The output grid (64³ voxels of 3 mm: the tutorial's tensor size, all of the brain) is centred
    on the MNI152 brain's bounding box (145 × 181 × 155 mm). ``qc_threshold`` flags scans whose
    correlation with the template is lower. It is set on real adult heads (``bench/qc_real_heads.py``,
    the table in docs/preprocessing.md): the lowest correctly registered real head there scores
    just above it, so it flags gross misregistration (10–15 mm or more, wrong axes) but passes
    most 5° and some 5–10 mm errors; ``standard-v1`` keeps 0.5, set on synthetic scans alone,
    which flags correctly registered real heads. N4 is off by default: it cost minutes per scan on
    our CPUs while registration (mutual information) and deepbet tolerate a smooth bias.

    ``skull_strip`` chooses the brain mask: ``"deepbet-coarse"`` (default) is deepbet's first
    network, which deepbet runs on a 128³ copy of the whole volume to find the brain's box, taken
    as the mask (about 2 mm voxels for a head-sized field of view, finer than the 3 mm output);
    ``"deepbet"`` is deepbet's second network on that box resampled to ``strip_shape``³ (the
    ``standard-v1`` default). Registration samples ``registration_sampling``
    of the voxels (seeded) of a template cropped to the MNI brain's box plus
    ``registration_margin`` mm (``None``: the template's whole field of view, as in
    ``standard-v1``), at most ``registration_iterations`` per level (shrink factors 4, 2, 1 of
    the ``registration_voxel_size`` pair; ``standard-v1`` allowed 200 at the last level, where
    it converged after about 20 and each iteration costs most).

    ``session_reuse`` (``prepare`` only) strips and registers the first scan of a session (in
    sorted order; the next one where it fails) and aligns each other repeat of the session to it:
    an ANTs rigid registration of the repeat's whole head at ``rigid_voxel_size`` mm to the
    reference's head cropped to its brain's box plus ``registration_margin`` mm (the metric on
    ``registration_sampling`` of the voxels, at most ``rigid_iterations`` per level, shrink
    factors 4, 2, 1); the repeat's mask is the reference's carried through that motion and its
    registration the reference's composed with it. ``standard-v1`` prepares every scan on its
    own. ``bench/prepare.py`` measures the result against ``standard-v1``.

    ``antialias`` smooths the brain to an FWHM of that many output voxels before it is resampled
    onto the output grid (0: point sampling, as before the field existed): see
    :func:`~brainage.preprocess.stages.antialias_sigmas`.
    """

    name: ClassVar[str] = "standard"
    LEGACY: ClassVar[dict[str, Any]] = {
        "skull_strip": "deepbet",
        "registration_margin": None,
        "registration_iterations": (2100, 1200, 200),
        "session_reuse": False,
        "rigid_voxel_size": 4.0,
        "rigid_iterations": (20, 10, 5),
        "antialias": 0.0,
    }
    shape: tuple[int, int, int] = (64, 64, 64)
    voxel_size: float = 3.0
    dtype: str = "float16"
    qc_threshold: float | None = 0.4
    bias_field: bool = False
    n4_shrink_factor: int = 4
    skull_strip: str = "deepbet-coarse"
    strip_shape: int = 192
    strip_threshold: float = 0.5
    registration: str = "Affine"
    registration_voxel_size: float = 4.0
    registration_sampling: float = 0.25
    registration_margin: float | None = 10.0
    registration_iterations: tuple[int, int, int] = (2100, 1200, 10)
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    session_reuse: bool = True
    rigid_voxel_size: float = 4.0
    rigid_iterations: tuple[int, int, int] = (20, 10, 5)
    antialias: float = 1.5

    #: Fields that decide the brain mask and the registration (the expensive, reusable part).
    SPATIAL_FIELDS: ClassVar[tuple[str, ...]] = (
        "bias_field",
        "n4_shrink_factor",
        "skull_strip",
        "strip_shape",
        "strip_threshold",
        "registration",
        "registration_voxel_size",
        "registration_sampling",
        "registration_margin",
        "registration_iterations",
    )
    SESSION_FIELDS: ClassVar[tuple[str, ...]] = ("session_reuse", "rigid_voxel_size", "rigid_iterations")
    SKULL_STRIPS: ClassVar[tuple[str, ...]] = ("deepbet-coarse", "deepbet")
    #: N4 was ``bias_correction``, the name the age-bias correction of training also has.
    OLD_FIELD_NAMES: ClassVar[dict[str, str]] = {"bias_field": "bias_correction"}

    def __post_init__(self) -> None:
        if self.skull_strip not in self.SKULL_STRIPS:
            raise ValueError(f"unknown skull_strip {self.skull_strip!r}; choose from {', '.join(self.SKULL_STRIPS)}")

    @property
    def affine(self) -> np.ndarray:
        affine = np.diag([self.voxel_size] * 3 + [1.0])
        affine[:3, 3] = np.asarray(MNI_BRAIN_CENTER) - self.voxel_size * (np.asarray(self.shape) - 1) / 2
        return affine


#: Configuration classes by the ``pipeline`` name that ``to_dict`` writes.
PIPELINES: dict[str, type[PipelineConfig]] = {"standard": StandardConfig, "tutorial": TutorialConfig}
#: Old pipeline names and their names now: ``make_config``, ``config_from_dict`` and ``--pipeline`` accept them.
RENAMED_PIPELINES: dict[str, str] = {"seed": "tutorial"}
#: The earlier name of the tutorial's configuration class.
SeedConfig = TutorialConfig
#: Named configurations for ``make_config`` and ``brainage prepare --pipeline``: a class and its overrides.
#: ``standard-v1`` is the earlier default, whose caches and checkpoints it reproduces.
NAMED_PIPELINES: dict[str, tuple[type[PipelineConfig], dict[str, Any]]] = {
    "standard": (StandardConfig, {}),
    "standard-v1": (StandardConfig, {**StandardConfig.LEGACY, "qc_threshold": 0.5}),
    "tutorial": (TutorialConfig, {}),
}


def pipeline_name(name: str) -> str:
    """The current name of pipeline ``name`` (itself unless it is an old name in :data:`RENAMED_PIPELINES`)."""
    return RENAMED_PIPELINES.get(name, name)


def make_config(pipeline: str = "standard", **overrides: Any) -> PipelineConfig:
    """The named pipeline's default configuration with ``overrides`` (``None`` values ignored);
    old names of pipelines and settings (``seed``, ``bias_correction``) are read as their names now."""
    pipeline = pipeline_name(pipeline)
    if pipeline not in NAMED_PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}; choose from {', '.join(NAMED_PIPELINES)}")
    cls, defaults = NAMED_PIPELINES[pipeline]
    given = _current_fields(cls, {key: value for key, value in overrides.items() if value is not None})
    unknown = sorted(set(given) - {field.name for field in fields(cls)})
    if unknown:
        raise ValueError(f"the {pipeline} pipeline has no setting {', '.join(unknown)}")
    return cls(**{**defaults, **given})


def config_from_dict(values: dict[str, Any]) -> PipelineConfig:
    """Rebuild a configuration written by ``to_dict`` (lists become tuples; missing fields added
    since are read as their :attr:`~PipelineConfig.LEGACY` values; old names of the pipeline and
    of fields as their names now)."""
    values = dict(values)
    cls = PIPELINES[pipeline_name(values.pop("pipeline"))]
    values = _current_fields(cls, values)
    known = {field.name for field in fields(cls)}
    given = {key: tuple(value) if isinstance(value, list) else value for key, value in values.items() if key in known}
    return cls(**{**cls.LEGACY, **given})


def _current_fields(cls: type[PipelineConfig], values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with the old names of ``cls``'s renamed fields replaced by their names now."""
    current = {old: new for new, old in cls.OLD_FIELD_NAMES.items()}
    return {current.get(key, key): value for key, value in values.items()}


@dataclass(frozen=True)
class Spatial:
    """The reusable result of the expensive stages: native-space brain mask and registration."""

    mask: np.ndarray  # bool, RAS-reoriented native voxel grid
    world_to_source: np.ndarray  # 4×4, MNI world → native world (RAS mm)


@dataclass(frozen=True)
class SessionReference:
    """A session's stripped and registered scan, for its repeats to align to (``session_reuse``)."""

    data: np.ndarray  # RAS-reoriented volume
    affine: np.ndarray
    spatial: Spatial

    @classmethod
    def from_file(cls, path: str | Path, spatial: Spatial) -> SessionReference:
        """The scan at ``path``, loaded and reoriented as the standard pipeline does, with its ``spatial``."""
        scan = load_scan(path)
        return cls(*stages.reorient_ras(scan.data, scan.affine), spatial)


@dataclass(frozen=True)
class PreparedScan:
    """One preprocessed scan: the volume on the config's grid, its QC score, the spatial result,
    the CPU seconds of each stage that ran (keys from :data:`STAGES`) and the adequacy measures
    (:func:`brainage.preprocess.adequacy.measure`; empty for the seed pipeline, which does not register)."""

    volume: np.ndarray
    qc_score: float
    spatial: Spatial | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    measures: dict[str, float] = field(default_factory=dict)


class StageTimer:
    """CPU seconds (this process, all its threads) per named stage, summed over repeated entries."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.process_time()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.process_time() - start


def preprocess_scan(
    path: str | Path,
    config: PipelineConfig,
    spatial: Spatial | None = None,
    device: str = "cpu",
    reference: SessionReference | None = None,
) -> PreparedScan:
    """Preprocess one scan file with ``config``; reuse ``spatial`` (mask + registration) if given,
    else, with a session's ``reference`` (standard pipeline), align the scan to it rigidly
    (:func:`align_to_reference`) instead of stripping and registering it.

    ``device`` runs the skull-stripping network there (``"cpu"``, ``"cuda"``, ``"auto"``; CPU
    if the device is missing). Raises :class:`~brainage.errors.InputError` naming the file if it
    cannot be read or a stage fails.
    """
    timer = StageTimer()
    measures: dict[str, float] = {}
    try:
        spatial = spatial or external_spatial(path, config)  # an fMRIPrep brain mask beside the scan: preprocess/external_mask.py
        if isinstance(config, TutorialConfig):
            volume = _run_tutorial(Path(path), config, timer)
        elif isinstance(config, StandardConfig):
            volume, spatial, source = _run_standard(Path(path), config, spatial, timer, device, reference)
        else:
            raise TypeError(f"unknown configuration {type(config).__name__}")
        with timer("qc"):
            score = registration_score(volume, config.affine)
            if isinstance(config, StandardConfig) and spatial is not None:
                measures = measure(volume, config.affine, source[0], source[1], spatial.world_to_source)
    except InputError:
        raise
    except (OSError, ValueError, RuntimeError, nib.filebasedimages.ImageFileError) as error:
        raise InputError(path, str(error).splitlines()[0] if str(error) else type(error).__name__) from error
    return PreparedScan(volume.astype(config.dtype), score, spatial, timer.seconds, measures)


def _run_tutorial(path: Path, config: TutorialConfig, timer: StageTimer) -> np.ndarray:
    from nilearn.image import resample_img

    with timer("load"):
        scan = load_scan(path)  # refuses NaN-only and constant images, which would cache a NaN volume
        header = nib.load(path)  # lazy: the header only
        affine = header.get_qform() if isinstance(header, nib.Nifti1Pair) else scan.affine  # the tutorial's sform := qform
    with timer("resample"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nilearn's "casting data from int16 to float32"
        resampled = resample_img(
            nib.Nifti1Image(scan.data, affine),
            target_affine=config.affine,
            target_shape=config.shape,
            force_resample=True,
            copy_header=True,
        )
    with timer("normalise"):
        return stages.zscore(stages.squeeze_trailing(resampled.get_fdata(dtype=np.float32)))


def _run_standard(
    path: Path,
    config: StandardConfig,
    spatial: Spatial | None,
    timer: StageTimer,
    device: str,
    reference: SessionReference | None,
) -> tuple[np.ndarray, Spatial, tuple[tuple[int, ...], np.ndarray]]:
    """The normalised volume, its :class:`Spatial` and the RAS-reoriented scan's (shape, affine)."""
    with timer("load"):
        scan = load_scan(path)
        data, affine = stages.reorient_ras(scan.data, scan.affine)
    if config.bias_field:
        with timer("bias"):
            data = stages.n4_bias_correct(data, affine, config.n4_shrink_factor)
    if (spatial is None or spatial.mask.shape != data.shape) and reference is not None:
        with timer("rigid"):
            spatial = align_to_reference(data, affine, reference, config)
    elif spatial is None or spatial.mask.shape != data.shape:
        spatial = find_spatial(data, affine, config, timer, device)
    source = (data.shape, affine)
    with timer("resample"):
        inside, data, cut = stages.crop_to(spatial.mask, affine, data)  # the brain's box: the same values, a fraction of the voxels
        brain = np.where(inside, data, np.float32(0))
        volume = stages.resample(brain, cut, config.affine, config.shape, spatial.world_to_source, antialias=config.antialias)
        mask = stages.resample(inside.astype(np.float32), cut, config.affine, config.shape, spatial.world_to_source)
    with timer("normalise"):
        return stages.robust_zscore(volume, mask > 0.5, config.clip_percentiles), spatial, source


def find_spatial(data: np.ndarray, affine: np.ndarray, config: StandardConfig, timer: StageTimer | None = None, device: str = "cpu") -> Spatial:
    """Skull-strip a RAS volume, then register its brain to the MNI152 brain."""
    timer = timer or StageTimer()
    with timer("strip"):
        if config.skull_strip == "deepbet-coarse":
            mask = stages.skull_strip_coarse(data, config.strip_threshold, device)
        else:
            mask = stages.skull_strip(data, config.strip_shape, config.strip_threshold, device)
    with timer("register"):
        world_to_source = register_brain(np.where(mask, data, np.float32(0)), affine, config)
    return Spatial(mask, world_to_source)


def align_to_reference(data: np.ndarray, affine: np.ndarray, reference: SessionReference, config: StandardConfig) -> Spatial:
    """A repeat's :class:`Spatial` from its session's ``reference``: the rigid motion from the
    reference's world to the repeat's (whole head against the reference's head around its brain),
    the reference's mask carried through it (trilinear, > 0.5) and its registration composed with it."""
    size = config.rigid_voxel_size
    fixed_grid, fixed_shape = stages.box_grid(reference.affine, reference.spatial.mask, size, config.registration_margin)
    moving_grid, moving_shape = stages.isotropic_grid(affine, data.shape, size)
    motion = stages.register_affine(
        stages.resample(data, affine, moving_grid, moving_shape), moving_grid,
        stages.resample(reference.data, reference.affine, fixed_grid, fixed_shape), fixed_grid,
        "Rigid", config.registration_sampling, iterations=config.rigid_iterations,
    )  # fmt: skip  # arguments grouped by meaning
    mask = stages.carry_mask(reference.spatial.mask, reference.affine, affine, data.shape, np.linalg.inv(motion))
    if not mask.any():
        raise ValueError("the session reference's brain mask falls outside this scan")
    return Spatial(mask, motion @ reference.spatial.world_to_source)


def external_spatial(path: str | Path, config: PipelineConfig, mask_path: str | Path | None = None) -> Spatial | None:
    """The :class:`Spatial` of ``path`` from its external brain mask (``mask_path``, else fMRIPrep's
    beside it: :func:`~brainage.preprocess.external_mask.external_mask_path`), or None when it has
    none or ``config`` is not the standard pipeline. Raises :class:`InputError` naming the mask when
    it cannot be used."""
    mask_file = external_mask_path(path, mask_path)
    if mask_file is None or not isinstance(config, StandardConfig):
        return None
    scan = load_scan(path)
    data, affine = stages.reorient_ras(scan.data, scan.affine)
    mask = read_external_mask(mask_file, path, data.shape, affine)
    return Spatial(mask, register_brain(np.where(mask, data, 0.0).astype(np.float32), affine, config))


def register_brain(brain: np.ndarray, affine: np.ndarray, config: StandardConfig, seed: int = 1) -> np.ndarray:
    """:func:`register_to_template` with ``config``'s registration settings."""
    return register_to_template(
        brain,
        affine,
        config.registration_voxel_size,
        config.registration,
        config.registration_sampling,
        config.registration_margin,
        config.registration_iterations,
        seed,
    )


def register_to_template(
    brain: np.ndarray,
    affine: np.ndarray,
    voxel_size: float,
    transform: str = "Affine",
    sampling: float = 0.25,
    margin: float | None = None,
    iterations: tuple[int, int, int] = (2100, 1200, 200),
    seed: int = 1,
) -> np.ndarray:
    """Register a skull-stripped brain to the MNI152 brain, both resampled to ``voxel_size`` mm;
    the metric samples a ``sampling`` fraction of the voxels (``seed``). ``margin`` (mm) crops the
    template to the MNI brain's box plus that margin (None: the template's field of view);
    ``iterations`` caps each of the three levels.

    Returns the 4×4 matrix mapping MNI world points (RAS mm) to the brain's world.
    """
    grid, grid_shape = stages.isotropic_grid(affine, brain.shape, voxel_size)
    coarse = stages.resample(brain, affine, grid, grid_shape)
    if not coarse.any():
        extent = " × ".join(f"{n:g}" for n in np.round(np.abs(affine[:3, :3]).sum(axis=0) * brain.shape, 2))
        raise ValueError(f"the brain covers no voxel of the {voxel_size:g} mm registration grid (field of view {extent} mm)")
    template_affine, template_shape = template_grid(voxel_size, margin)
    template, _ = template_on_grid(template_affine, template_shape)
    return stages.register_affine(coarse, grid, template, template_affine, transform, sampling, seed, iterations)
