"""The input contract that travels with weights: size, channels and normalisation (light: no torch).

Like timm's ``PretrainedCfg``, every weight source says what it expects of an image; lowmed records the contract in
``config.yaml``, ``train.json`` and every checkpoint, and feeds the network accordingly in training, feature
caching, evaluation and fine-tuning from a run.
"""

from __future__ import annotations

from dataclasses import dataclass

from lowmed.errors import LowmedError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --input-norm names: per-channel mean and std of an input scaled to [0, 1] (one value: every channel alike)
INPUT_NORMS = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "xrv": ((0.5,), (0.5 / 1024,)),  # torchxrayvision's [-1024, 1024]: (2x − 1) · 1024
    "unit": ((0.0,), (1.0,)),  # [0, 1] as decoded
}


@dataclass(frozen=True)
class Preprocessing:
    """What the weights expect of an input — like timm's ``PretrainedCfg`` — recorded in ``config.yaml``,
    ``train.json`` and every checkpoint, so that training, cached features, evaluation and fine-tuning from a run
    all feed the network alike.

    ``channels`` 1: the image is averaged to grey before normalising, and the grey plane is given to each of the
    backbone's three input channels (a 1-channel stem is loaded as three copies of a third of itself, which
    computes the same).
    """

    input_size: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channels: int = 3

    def to_dict(self) -> dict:
        return {
            "input_size": self.input_size,
            "channels": self.channels,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, values: dict) -> "Preprocessing":
        """A recorded contract (a checkpoint's or ``train.json``'s; from before ``channels``: 3 channels)."""
        return cls(
            int(values["input_size"]), tuple(values["mean"]), tuple(values["std"]), int(values.get("channels", 3))
        )

    @property
    def norm(self) -> str:
        """The normalisation as ``--input-norm`` takes it: a known name, or the numbers."""
        for name, (mean, std) in INPUT_NORMS.items():
            if (self.mean, self.std) == _per_channel(mean, std, self.channels):
                return name
        return ",".join(f"{value:g}" for value in (*self.mean, *self.std))

    def with_input(self, input_size: int, channels: int | None, norm: str | None) -> "Preprocessing":
        """This contract with a run's own ``--image-size``, ``--input-channels`` and ``--input-norm`` where given."""
        channels = channels or self.channels
        if norm is None:  # the weights' own numbers, averaged or copied to the channels asked
            mean, std = _per_channel(self.mean, self.std, channels)
        else:
            mean, std = parse_input_norm(norm, channels)
        return Preprocessing(input_size, mean, std, channels)


def _per_channel(mean: tuple, std: tuple, channels: int) -> tuple[tuple, tuple]:
    if len(mean) == channels:
        return tuple(mean), tuple(std)
    if len(mean) == 1:
        return tuple(mean) * channels, tuple(std) * channels
    return (sum(mean) / len(mean),), (sum(std) / len(std),)  # three channels' numbers for one grey channel


def parse_input_norm(norm: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``imagenet`` | ``xrv`` | ``unit`` | ``MEAN,STD`` | one mean and one std per channel, comma-separated."""
    if norm in INPUT_NORMS:
        return _per_channel(*INPUT_NORMS[norm], channels)
    expected = f"expected {', '.join(INPUT_NORMS)}, MEAN,STD or {channels} means then {channels} stds"
    try:
        numbers = tuple(float(part) for part in norm.split(","))
    except ValueError:
        raise LowmedError(f"--input-norm {norm!r}: {expected}") from None
    if len(numbers) not in (2, 2 * channels):
        raise LowmedError(f"--input-norm {norm!r}: {len(numbers)} numbers for {channels} channel(s); {expected}")
    half = len(numbers) // 2
    mean, std = numbers[:half], numbers[half:]
    if any(value <= 0 for value in std):
        raise LowmedError(f"--input-norm {norm!r}: a standard deviation must be positive")
    return _per_channel(mean, std, channels)
