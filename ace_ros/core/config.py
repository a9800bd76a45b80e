"""One settings dataclass per job; field names are the CLI flags and the ROS parameters.

Precedence everywhere: dataclass defaults < preset < YAML file < explicit flags/parameters.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Type, TypeVar

T = TypeVar('T')


def _f(default: Any, help: str) -> Any:  # noqa: A002 - 'help' reads best at call sites
    return field(default=default, metadata={'help': help})


#: What `MappingConfig.encoder_precision` takes; a map records 'float' or 'int8'.
ENCODER_PRECISIONS = ('auto', 'float', 'int8')
HEAD_PRECISIONS = ('float', 'int8')


@dataclass(frozen=True)
class MappingConfig:
    """Settings for training a scene head (mapping); see ACE_NOTES.md for the numbers."""

    preset: str = _f('default', 'named settings: ' + ', '.join(
        ['default', 'gpu-fast', 'cpu', 'tiny']))
    encoder: str = _f('', "encoder weights path; '' = the shipped encoder")
    device: str = _f('auto', "'auto', 'cpu', 'cuda' or 'cuda:N'")
    seed: int = _f(0, 'random seed for augmentation, sampling and initialisation')
    image_height: int = _f(480, 'images are resized to this height (px) before encoding')
    # training buffer
    buffer_size: int = _f(8_000_000, 'maximum number of training samples (cells) kept')
    samples_per_image: int = _f(1024, 'cells sampled from each encoded image')
    max_buffer_passes: int = _f(10, 'at most this many augmented passes over the frames')
    # augmentation while filling the buffer
    augment: bool = _f(True, 'random scale, rotation and photometric jitter')
    aug_scale_min: float = _f(2.0 / 3.0, 'smallest height scale factor')
    aug_scale_max: float = _f(1.5, 'largest height scale factor')
    aug_crop: bool = _f(False, 'an image scaled up is cropped at random to the size of an '
                        'unscaled one: close-up views at the cost of an unscaled encoding')
    aug_rotation_deg: float = _f(15.0, 'largest in-plane rotation, degrees')
    aug_brightness: float = _f(0.1, 'brightness jitter amplitude')
    aug_contrast: float = _f(0.1, 'contrast jitter amplitude')
    # triangulated targets (a warm start for short budgets)
    triangulate: bool = _f(False, 'supervise the first part of training with 3D points '
                           'triangulated from SIFT matches between mapping frames (their '
                           'poses are known): far fewer iterations to the same accuracy')
    target_weight: float = _f(1.0, 'weight of the triangulated targets\' loss at the start')
    target_until: float = _f(0.7, 'share of training after which the targets are not used '
                             '(their weight fades out over the second half of it)')
    # regions: one head per part of the scene (ESAC-style experts)
    regions: int = _f(1, 'split the scene into at most this many regions (k-means of the '
                      'points the mapping frames look at) and train one head per region, the '
                      "iterations shared out by the regions' cells: more capacity for the "
                      'same arithmetic; localization tries the regions in the order the image '
                      "context ranks them (see LocalizationConfig.regions_tried)")
    region_radius_m: float = _f(0.5, 'as few regions as make the points the frames of each '
                                'look at lie within this mean distance (m) of their centre '
                                '(TUM fr1/rpy: 0.46 m with one region; the 360-degree room '
                                'proxy: 2.5 m with one, 0.52 m with 8)')
    # image context (GLACE-style): which part of the scene an image sees
    global_context: bool = _f(False, "give the head each image's mean feature as context: "
                              'surfaces that look alike locally (a room seen from all sides) '
                              'are told apart by the rest of the image')
    context_noise: float = _f(0.3, 'std of the Gaussian noise added to each channel of an '
                              "image's context in training (the context has norm "
                              'sqrt(512), ~1 per channel)')
    # optimisation
    batch_size: int = _f(5120, 'samples per iteration')
    epochs: float = _f(16.0, 'passes over the buffer (sets the iteration count)')
    max_iterations: int = _f(0, 'cap on iterations; 0 = no cap')
    time_budget_s: float = _f(0.0, 'wall-clock budget (s) of mapping (mapping_node: from '
                              '~/finish, queued keyframes included): encoding stops after '
                              '25 percent of it, training gets the rest (at most the '
                              "schedule's iterations); 0 = no budget")
    learning_rate: float = _f(5e-3, 'OneCycle peak learning rate (AdamW)')
    weight_decay: float = _f(0.01, 'AdamW weight decay')
    head_blocks: int = _f(1, 'extra residual blocks in the head')
    head_channels: int = _f(512, 'width of the head (512 as ACE; 256 trains ~3x faster per '
                            'cell on a CPU)')
    mixed_precision: bool = _f(True, 'fp16 on CUDA, bf16 on a CPU with native bf16 (AVX-512 '
                                     'BF16, AMX, Arm BF16); fp32 on other CPUs')
    encoder_precision: str = _f('auto', "encoder features: 'float' (fp32, or the mixed "
                                "precision above), 'int8' (OpenVINO, ~2x faster on CPUs "
                                'without native bf16; localization follows the map) or '
                                "'auto' (int8 on a CPU without native bf16, else float)")
    # loss (ACE's annealed robust reprojection loss)
    loss_tau_max: float = _f(50.0, 'soft clamp added to tau_min at the start (px)')
    loss_tau_min: float = _f(1.0, 'soft clamp at the end of training (px)')
    depth_min: float = _f(0.1, 'predictions closer than this (m) are invalid')
    depth_max: float = _f(1000.0, 'predictions farther than this (m) are invalid')
    max_reprojection_px: float = _f(1000.0, 'larger reprojection errors are invalid')
    invalid_target_depth: float = _f(10.0, 'invalid cells are pulled to this depth (m)')

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset '{self.preset}'; choose one of {sorted(PRESETS)}")
        _positive(self, 'image_height', 'buffer_size', 'samples_per_image', 'batch_size',
                  'max_buffer_passes', 'epochs', 'learning_rate', 'loss_tau_min',
                  'depth_min', 'max_reprojection_px', 'invalid_target_depth',
                  'region_radius_m')
        if self.image_height % 8:
            raise ValueError(f'image_height must be a multiple of 8, got {self.image_height}')
        if not 0 < self.aug_scale_min <= self.aug_scale_max:
            raise ValueError('need 0 < aug_scale_min <= aug_scale_max, got '
                             f'{self.aug_scale_min}, {self.aug_scale_max}')
        if self.depth_max <= self.depth_min:
            raise ValueError(f'depth_max ({self.depth_max}) must exceed depth_min '
                             f'({self.depth_min})')
        if self.encoder_precision not in ENCODER_PRECISIONS:
            raise ValueError("encoder_precision must be 'auto', 'float' or 'int8', got "
                             f"'{self.encoder_precision}'")
        if not 0.0 < self.target_until <= 1.0 or self.target_weight < 0:
            raise ValueError('need target_weight >= 0 and 0 < target_until <= 1, got '
                             f'{self.target_weight}, {self.target_until}')
        if not 0 < self.head_channels <= 512:
            raise ValueError(f'head_channels must be in 1..512, got {self.head_channels}')
        if self.context_noise < 0:
            raise ValueError(f'context_noise must be >= 0, got {self.context_noise}')
        if self.regions < 1:
            raise ValueError(f'regions must be >= 1, got {self.regions}')
        if self.max_iterations < 0 or self.head_blocks < 0 or self.time_budget_s < 0:
            raise ValueError('max_iterations, head_blocks and time_budget_s must be >= 0')


@dataclass(frozen=True)
class LocalizationConfig:
    """Settings for localizing images in a map."""

    encoder: str = _f('', "encoder weights path; '' = the shipped encoder")
    device: str = _f('auto', "'auto', 'cpu', 'cuda' or 'cuda:N'")
    image_height: int = _f(0, 'images are resized to this height (px) before encoding; 0 = '
                           'the height the map was made at (480 for maps that do not say)')
    mixed_precision: bool = _f(True, 'encoder and head in fp16 on CUDA, bf16 on a CPU with '
                                     'native bf16; fp32 on other CPUs')
    backend: str = _f('auto', "network inference: 'torch', 'openvino' (CPU), "
                      "'openvino-int8' (CPU, the encoder quantized to int8) or 'auto' "
                      '(follows the map: int8 for a map built from int8 features, else '
                      'OpenVINO on the CPU when installed)')
    head_precision: str = _f('float', "the head at localization: 'float' (fp32, or bf16/fp16 "
                             "as mixed_precision says) or 'int8' (CPU, dynamic quantization: "
                             '~1.2x faster where bf16 is not native, ~1 mm less precise)')
    ransac_hypotheses: int = _f(64, 'PnP-RANSAC hypotheses per frame')
    inlier_threshold_px: float = _f(10.0, 'inlier reprojection error (px at image_height)')
    max_reprojection_px: float = _f(100.0, 'reprojection errors are clamped here for scoring')
    ransac_sample_fraction: float = _f(0.3, 'hypotheses are drawn from this fraction of cells, '
                                       'those most coherent with their image neighbours '
                                       '(1 = all cells, as ACE)')
    ransac_max_tries: int = _f(20_000, 'random 4-tuples drawn at most per frame (70 percent '
                               'outliers needs ~10k; caps the time spent on hopeless frames)')
    refinement_iterations: int = _f(100, 'iterative refinement steps at most')
    min_inliers: int = _f(50, 'fewer inliers than this is a failure (random '
                          'correspondences reach ~15 of 4800 by chance)')
    regions_tried: int = _f(2, 'a map with several regions: at most this many region heads '
                            'per frame, in the order its image context ranks them')
    region_accept_inliers: int = _f(300, 'a region whose pose has this many inliers is '
                                    'taken without trying the next (a wrong region reaches '
                                    '~150 of 4800 cells; a right one ~1000)')
    seed: int = _f(0, 'RANSAC random seed')

    def __post_init__(self) -> None:
        _positive(self, 'ransac_hypotheses', 'ransac_max_tries', 'inlier_threshold_px',
                  'max_reprojection_px', 'min_inliers', 'regions_tried',
                  'region_accept_inliers')
        if self.image_height < 0 or self.image_height % 8:
            raise ValueError(f'image_height must be a multiple of 8, got {self.image_height} '
                             '(0: the height the map was made at)')
        if not 0.0 < self.ransac_sample_fraction <= 1.0:
            raise ValueError('ransac_sample_fraction must be in (0, 1], got '
                             f'{self.ransac_sample_fraction}')
        if self.refinement_iterations < 0:
            raise ValueError('refinement_iterations must be >= 0, got '
                             f'{self.refinement_iterations}')
        if self.head_precision not in HEAD_PRECISIONS:
            raise ValueError(f"head_precision must be one of {', '.join(HEAD_PRECISIONS)}; got "
                             f"'{self.head_precision}'")
        if self.min_inliers < 4:
            raise ValueError(f'min_inliers must be >= 4 (PnP needs 4), got {self.min_inliers}')
        if self.max_reprojection_px <= self.inlier_threshold_px:
            raise ValueError(f'max_reprojection_px ({self.max_reprojection_px}) must exceed '
                             f'inlier_threshold_px ({self.inlier_threshold_px})')


def _positive(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not value > 0:
            raise ValueError(f'{name} must be > 0, got {value!r}')


#: Named mapping settings: field overrides applied on top of the defaults.
PRESETS: Dict[str, Dict[str, Any]] = {
    # The paper's schedule: 8 M cell buffer, 16 epochs (~25k iterations of 5120).
    'default': {},
    # A GPU map in a fraction of the paper's schedule: 4 augmented passes (at most 2000
    # encodings) and 6400 iterations instead of 10 and ~16000-25000. Issue 14's run on one
    # H200 (a real 500-frame room, the GPU path then CPU-bound): 92.8 % within 5cm/5deg in
    # 74 s against the default's 93.2 % in 167 s; 2 passes / 3200 iterations lost 10 points.
    # Not yet timed on the GPU-native path (benchmarks/bench_gpu.py).
    'gpu-fast': {'max_buffer_passes': 4, 'max_iterations': 6400},
    # A fixed budget for any scene size, under 10 minutes on a 2-core CPU: a 512k-cell buffer
    # (~500 image encodings: one pass over a 500-frame scene, more augmented passes over
    # smaller ones); a 128-wide head (~47 % of the 256-wide head's time per iteration on 2
    # AVX2 cores, so ~2x the iterations in the same time) warm-started by triangulated
    # targets and given each image's context (a room seen from all sides); batches of 2560;
    # images scaled up in augmentation (close-up views) cropped back to the unscaled size
    # (an encoding at 1.5x the height costs ~2.7x one at 1x on an AVX2 CPU: uncropped, the
    # budget held 268 images of a 500-frame room, cropped ~500); as many iterations as fit
    # in 9 minutes (issue 13, benchmarks/RESULTS.md sessions 15-16, 2 AVX2
    # cores, the 360-degree room proxy within 5cm/5deg: 28 % uncropped, 52-59 % never
    # upscaled, 68-70 % cropped). Up to 8 regions, one head each, for a scene whose views one
    # head does not cover (session 20, the room proxy at 6847 iterations: 65 -> 76 %; TUM
    # keeps one head: 8 forced regions there gave 78.5 % instead of 90.7 %). Since session 21
    # twice the peak learning rate (0.01; at 6847 iterations the room proxy's 76 / 73 % for
    # two seeds became 79 / 82 %, TUM 87.8 -> 91.3 %) and at most 20000 iterations, which a
    # CPU with native bf16 fits in the budget (there: 76 -> 87 % timed); an AVX2-only CPU
    # fits ~7000-8400 either way.
    'cpu': {'buffer_size': 512_000, 'max_buffer_passes': 10, 'epochs': 100.0,
            'max_iterations': 20_000, 'learning_rate': 0.01, 'time_budget_s': 540.0,
            'head_channels': 128, 'triangulate': True, 'global_context': True,
            'context_noise': 0.1,
            'batch_size': 2560, 'aug_scale_max': 1.5, 'aug_crop': True, 'regions': 8},
    # Tests and smoke runs: tiny images, few iterations.
    # Float features: int8's speed matters little there, and tests run the same everywhere.
    'tiny': {'image_height': 240, 'max_buffer_passes': 1, 'samples_per_image': 512,
             'batch_size': 2048, 'epochs': 12.0, 'max_iterations': 400,
             'encoder_precision': 'float'},
}


def mapping_config(preset: str = 'default', **overrides: Any) -> MappingConfig:
    """Defaults < preset < overrides."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}'; choose one of {sorted(PRESETS)}")
    values = {**PRESETS[preset], **overrides, 'preset': preset}
    return MappingConfig(**values)


def config_from_dict(cls: Type[T], values: Mapping[str, Any], source: str) -> T:
    """Build `cls` from a mapping, refusing unknown keys and wrong types by name."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f'{source}: unknown settings {unknown}; known: {sorted(known)}')
    converted = {}
    for name, value in values.items():
        want = type(known[name].default)
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or (want is not bool and isinstance(value, bool)):
            raise ValueError(f'{source}: {name} must be {want.__name__}, got {value!r}')
        converted[name] = value
    if cls is MappingConfig:
        preset = converted.pop('preset', 'default')
        return mapping_config(preset, **converted)  # type: ignore[return-value]
    return cls(**converted)


def config_to_dict(cfg: Any) -> Dict[str, Any]:
    """Plain dict of a settings dataclass (JSON/YAML-safe)."""
    return dataclasses.asdict(cfg)
