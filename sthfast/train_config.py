"""How to train, as ``sthfast train``'s flags say it: :class:`TrainConfig`, the protocols and the
model defaults that differ for the training job. Imports no torch, so that the command line's help
is quick."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path

from .config import help_field
from .data.adjacency import WEIGHTINGS
from .data.calendar import TIME_FEATURES
from .data.formats import EMBEDDED, SensorSeries, load_series

# process-group backends under torchrun (sthfast.distributed)
DIST_BACKENDS = ("auto", "gloo", "nccl")
# training losses ('auto': sthfast.auto_rules.chosen_loss)
LOSS_UNITS = ("scaled", "original")
LOSSES = ("auto", "mae", "mse", "huber")

PROTOCOLS = {
    # the paper: 48 -> 48, metrics on the original scale over the whole test set
    "paper": dict(model=dict(seq_len=48, pred_len=48), zeros_missing=False, horizons=(12, 24, 48)),
    # BasicTS / LargeST: 12 -> 12, zeros masked, horizons 3 / 6 / 12 and the average; patches of
    # 4 with stride 2 (the paper's 16 / 8 do not fit a 12-step window)
    "standard": dict(model=dict(seq_len=12, pred_len=12, patch_len=4, stride=2), zeros_missing=True,
                     horizons=(3, 6, 12)),
}
# where sthfast train departs from STHSepNetConfig's defaults (the model API's are the paper's),
# each chosen on the validation splits of the accuracy campaign (ACCURACY.md): the seasonal residual
# where the data are seasonal (seasonal_residual_helps), and a gate that starts with 10 % of the
# temporal stream, so that the LLM's global trend earns its share
TRAIN_MODEL_DEFAULTS = dict(seasonal_residual="auto", gate_init=0.1)
# taken from the data (and --time-features), never from flags
DATA_FIELDS = ("num_nodes", "in_features", "time_of_day_channel", "day_of_week_channel", "slots_per_day")


@dataclass
class TrainConfig:
    """How to train: data, protocol, optimisation, run folder. The model's own hyper-parameters are
    an :class:`STHSepNetConfig` (``num_nodes`` and ``in_features`` come from the data)."""

    data: str = help_field("embedded", "Series file (.npz, .h5, .csv) or 'embedded' (LOS-LOOP, shipped with the "
                                       "package).")
    adjacency: str | None = help_field(None, "Adjacency file (.npy, .npz, .csv matrix or from,to,cost edge list) for "
                                             "graph='static'; default: the data file's own 'adj' if it has one.")
    adjacency_weighting: str = help_field("binary", "Edge-list weights: 'binary', 'cost' (the third column as is) or "
                                                    "'gaussian' (exp(-(cost/std)^2)).", choices=WEIGHTINGS)
    adjacency_ids: str | None = help_field(None, "Text file of sensor ids in node order, for edge lists that name ids "
                                                 "(default: a .txt beside the .csv, if any).")
    csv_header: bool | None = help_field(None, "Whether a .csv series starts with a header row (default: guessed).")
    steps_per_day: int | None = help_field(None, "Steps per day of the calendar when the data has no timestamps (step "
                                                 "0 is Monday midnight; default 288, 5-minute data).")
    units: str | None = help_field(None, "Unit of the forecast values, for the plots' axes (default: the data file's "
                                         "'units' string if it has one, 'mph' for the embedded data, else 'data "
                                         "units').")
    data_key: str | None = help_field(None, "Array (npz) or group (h5) holding the series, if not the default.")
    drop_dead_nodes: bool = help_field(False, "Leave out the nodes with no valid reading in the training split "
                                              "(default: keep them, with a warning naming them; they are forecast "
                                              "from the others).")
    features: str | None = help_field(None, "Comma-separated feature channels to use (default all; PEMS0x.npz: flow "
                                            "only).")
    time_features: str | None = help_field(None, "Calendar channels appended to the inputs, comma-separated: "
                                                 "time_of_day, day_of_week; added anyway when the seasonal residual "
                                                 "or time embeddings read them.")
    protocol: str = help_field("paper", "'paper' (48 -> 48, original scale, whole test set) or 'standard' (12 -> 12, "
                                        "zeros masked, horizons 3/6/12). --seq-len / --pred-len override the lengths.",
                               choices=tuple(PROTOCOLS))
    zeros_missing: bool | None = help_field(None, "Treat exact zeros as missing readings (masked in loss and "
                                                  "metrics); default: the protocol's (standard: yes, paper: no).")
    split: str = help_field("0.7,0.1,0.2", "Chronological train,val,test fractions.")
    epochs: int = help_field(30, "Maximum training epochs.")
    batch_size: int = help_field(32, "Training batch size: the global batch; under torchrun each of the P processes "
                                     "takes batch_size / P of it (P must divide it).")
    eval_batch_size: int = help_field(64, "Evaluation batch size (per process under torchrun).")
    max_batches: int | None = help_field(None, "Stop each training epoch after this many (global) batches (quick "
                                               "runs); default: the whole training split.")
    loss: str = help_field("auto", "Training loss over the valid targets: 'mae' (masked MAE, as BasicTS), 'mse' (the "
                                   "authors'), 'huber' (between the two) or 'auto': Huber where over half of the "
                                   "varying nodes read 0 in more than half of their valid readings, else MAE "
                                   "(README).", choices=LOSSES)
    huber_delta: float = help_field(1.0, "Where the Huber loss turns from squared to absolute, in scaled units "
                                         "(standard deviations of the training split; under --loss-units original, "
                                         "the nodes' mean standard deviation).")
    loss_units: str = help_field("scaled", "Units of the training loss's errors: 'scaled' (each node's error in its "
                                           "own standard deviations, so every node weighs the same) or 'original' "
                                           "(the data's units, as the metrics and BasicTS's loss weigh them, divided "
                                           "by the nodes' mean standard deviation).", choices=LOSS_UNITS)
    lr: float = help_field(1e-3, "Adam learning rate (the authors use 3e-4 with 30 epochs on a GPU).")
    weight_decay: float = help_field(0.0, "Adam weight decay.")
    milestones: str = help_field("5,20,40,70", "Epochs at which the learning rate is multiplied by lr_gamma (the "
                                               "authors' MultiStepLR).")
    lr_gamma: float = help_field(0.3, "Learning-rate decay factor at each milestone.")
    clip: float = help_field(5.0, "Gradient-norm clipping threshold (0 disables).")
    patience: int = help_field(10, "Early stopping: epochs without a better validation MAE before stopping.")
    seed: int = help_field(2021, "Random seed (weights, data order, dropout).")
    device: str = help_field("auto", "'auto' (CUDA if available, else CPU), 'cpu', 'cuda' or 'cuda:N'; under torchrun "
                                     "each process takes cuda:LOCAL_RANK.")
    dist_backend: str = help_field("auto", "Under torchrun: the process group's backend, 'auto' (NCCL between CUDA "
                                           "devices, gloo between CPUs), 'gloo' or 'nccl'.", choices=DIST_BACKENDS)
    dist_timeout: float = help_field(600.0, "Under torchrun: seconds a process waits for the others in a collective "
                                            "before it fails (a stuck process stops the job instead of hanging it).")
    bf16: bool | None = help_field(None, "bfloat16 autocast of the training forward; default on for CPUs with "
                                         "bfloat16 matrix instructions (README, Speed).")
    compile: bool = help_field(False, "torch.compile the model for the training steps (inductor: the first step "
                                      "compiles, over two minutes on 2 CPU cores; evaluation runs eagerly).")
    threads: int | None = help_field(None, "CPU threads for torch (default: torch's choice).")
    out: str = help_field("runs/sthfast", "Run folder: checkpoints, metrics.json, log.jsonl, plots.")
    resume: bool = help_field(False, "Continue the run in --out from its last checkpoint (same data and config).")
    plots: bool = help_field(True, "Write PNG plots into the run folder.")

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.max_batches is not None and self.max_batches < 1:
            raise ValueError(f"max_batches={self.max_batches} must be >= 1")
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r} is not one of {list(LOSSES)}")
        if not self.huber_delta > 0:
            raise ValueError(f"huber_delta={self.huber_delta} must be > 0")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol={self.protocol!r} is not one of {list(PROTOCOLS)}")
        if not self.lr > 0 or self.clip < 0 or self.patience < 1:
            raise ValueError(f"lr={self.lr}, clip={self.clip}, patience={self.patience} out of range")
        if self.dist_backend not in DIST_BACKENDS:
            raise ValueError(f"dist_backend={self.dist_backend!r} is not one of {list(DIST_BACKENDS)}")
        if not self.dist_timeout > 0:
            raise ValueError(f"dist_timeout={self.dist_timeout} must be > 0")
        if self.adjacency_weighting not in WEIGHTINGS:
            raise ValueError(f"adjacency_weighting={self.adjacency_weighting!r} is not one of {list(WEIGHTINGS)}")
        if self.steps_per_day is not None and self.steps_per_day < 1:
            raise ValueError(f"steps_per_day={self.steps_per_day} must be >= 1")
        self.split_fractions()
        self.milestone_epochs()
        names = self.time_feature_list()
        if set(names) - set(TIME_FEATURES) or len(set(names)) != len(names):
            raise ValueError(f"time_features={self.time_features!r}: a comma-separated subset of "
                             f"{list(TIME_FEATURES)}, each at most once")

    def split_fractions(self) -> tuple[float, float, float]:
        parts = _numbers(self.split, float, "split")
        if len(parts) != 3:
            raise ValueError(f"split={self.split!r} must be three fractions train,val,test")
        return tuple(parts)

    def milestone_epochs(self) -> list[int]:
        return _numbers(self.milestones, int, "milestones") if self.milestones else []

    def feature_list(self) -> list[int] | None:
        return _numbers(self.features, int, "features") if self.features else None

    def time_feature_list(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.time_features.split(",") if p.strip()) if self.time_features else ()

    def missing_zeros(self) -> bool:
        return PROTOCOLS[self.protocol]["zeros_missing"] if self.zeros_missing is None else self.zeros_missing

    def read_series(self, data: str | None = None) -> SensorSeries:
        """The series named by this config (or the series file ``data``), read as it says."""
        series = load_series(data or self.data, key=self.data_key, features=self.feature_list(),
                             zeros_missing=self.missing_zeros(), header=self.csv_header)
        series.units = self.units or series.units
        return series

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def with_absolute_paths(self) -> "TrainConfig":
        """The same config with file paths made absolute, so a checkpoint works from any folder."""
        paths = {name: str(Path(value).expanduser().resolve())
                 for name in ("data", "adjacency", "adjacency_ids", "out")
                 if (value := getattr(self, name)) and value != EMBEDDED}
        return dataclasses.replace(self, **paths)


# TrainConfig fields that may change between a run and its --resume (they do not change the result).
RESUMABLE = ("epochs", "out", "resume", "device", "threads", "plots", "units", "eval_batch_size", "compile",
             "dist_backend", "dist_timeout")


def _numbers(text: str, kind, name: str) -> list:
    try:
        return [kind(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a comma-separated list of {kind.__name__}") from None
