"""wsss-lab: weakly supervised semantic segmentation, faithfully reproduced.

Every method is the same pipeline with a different weak signal and pseudo-label maker::

    weak signal ──► pseudo-label maker ──► pseudo-labels ──► segmentation network ──► mIoU

Conventions used throughout the package:

* label maps are integer arrays ``(H, W)``; 0 is background, 1..C the foreground classes,
  **255 = ignore** everywhere;
* images are ``uint8`` RGB, ``(H, W, 3)`` as numpy or ``(3, H, W)`` as tensors;
* CAMs are ``float32`` ``(C, H, W)`` over the *foreground* classes (index ``c`` is class ``c + 1``);
* all randomness goes through explicit seeds / generators.
"""

__version__ = "0.1.0"

IGNORE_INDEX = 255
