"""Joint threat model: an image and a latent perturbation optimised together on one loss (beyond the paper).

Each step takes one gradient of the shared loss w.r.t. both perturbations and moves each within its own
set; ``steps`` overrides the parts' own step counts. ``keep_best`` holds when either part asks for it.

Example::

    threat = JointPGD(ImagePGD(eps="16/255"), LatentPGD(eps=0.3, relative=True), steps=10)
    result = threat.run(model, batch, targeted_nll(batch), codec=codec)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .image import ImagePGD
from .latent import LatentPGD
from .protocol import Threat


@dataclass(frozen=True)
class JointPGD(Threat):
    """Both parts on one loss, ``steps`` iterations (in training: the image section's ``steps``)."""

    section: ClassVar[bool] = False  # configured through the image and latent sections

    image: ImagePGD = field(default_factory=ImagePGD)
    latent: LatentPGD = field(default_factory=LatentPGD)
    steps: int = 10

    def __post_init__(self) -> None:
        if self.latent.truncate:
            raise ValueError("latent.truncate caches the layers below the latent layer, which the image "
                             "perturbation changes at every step: use it with the latent threat alone")

    @classmethod
    def from_sections(cls, name: str, sections: dict[str, Threat]) -> JointPGD:
        image, latent = sections["image"], sections["latent"]
        assert isinstance(image, ImagePGD) and isinstance(latent, LatentPGD)
        return cls(image, latent, steps=image.steps)

    @property
    def keep_best(self) -> bool:  # type: ignore[override]
        return self.image.keep_best or self.latent.keep_best

    def parts(self) -> tuple[Threat, ...]:
        return (self.image, self.latent)

    def to_dict(self) -> dict:
        return {"image": self.image.to_dict(), "latent": self.latent.to_dict(), "steps": self.steps}
