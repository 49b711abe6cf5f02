"""Synthetic medical imaging studies whose labels are caused by localised lesions with known masks.

Four studies, each mirroring a real one (see each module's docstring):

- ``fundus-dr`` (:mod:`.fundus`): colour fundus photographs, diabetic-retinopathy grade 0-4 (ordinal),
  like Kaggle DR / EyePACS; mask = microaneurysms, haemorrhages, exudates, cotton-wool spots, new vessels.
- ``cxr-pneumonia`` (:mod:`.cxr`): chest radiographs, NORMAL / PNEUMONIA, like the Kaggle paediatric
  pneumonia set; mask = the consolidation.
- ``cxr-multilabel`` (:mod:`.cxr`): the same anatomy with CheXpert's five findings and its 1 / 0 / -1 /
  blank labels; one mask per finding.
- ``skin-lesion`` (:mod:`.skin`): dermoscopy, nv / mel / bkl like HAM10000; mask = the lesion, extra
  ``evidence`` mask = the colour-variation regions of melanomas.

``generate(study, n, size, seed, split, shortcut, **options)`` returns a :class:`SyntheticStudy`;
``generate_one(study, index, ...)`` renders one image alone (identical to row ``index``). Every image is
deterministic per (study, seed, split, index). ``generate(study, 0)`` gives a study's class names and
task without drawing anything.

Volumes (:mod:`.ct`): ``ct-nodule``, chest CT (D, H, W) with nodules of known 3-D masks, in its own
registry (``VOLUME_STUDIES``; ``STUDIES`` stays the 2-D studies that ``generate`` renders);
``generate_volume(study, index, ...)`` renders one volume, deterministic per (seed, split, index).
"""

from medxai.data.synthetic import ct, cxr, fundus, skin  # noqa: F401  (register the studies)
from medxai.data.synthetic._api import STUDY_REGISTRY, generate, generate_one
from medxai.data.synthetic._base import SyntheticStudy
from medxai.data.synthetic.ct import VOLUME_STUDIES, VOLUME_STUDY_REGISTRY, generate_volume, volume_label

STUDIES: tuple[str, ...] = tuple(STUDY_REGISTRY.names())

__all__ = ["STUDIES", "VOLUME_STUDIES", "VOLUME_STUDY_REGISTRY", "SyntheticStudy", "generate", "generate_one",
           "generate_volume", "volume_label"]
