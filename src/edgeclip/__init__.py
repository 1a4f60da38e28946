"""edgeclip: distill CLIP vision-language teachers into small, fast edge students.

The top-level package imports nothing heavy, so that ``edgeclip.runtime`` stays
usable on devices without torch. Import the parts you need::

    from edgeclip.models.teachers import load_teacher
    from edgeclip.models import create_student
"""

__version__ = "0.1.0"

import logging as _logging

# torchao (imported by Lightning) registers enums with torch's pytree and logs a deprecation
# warning on every import; it is noise for edgeclip users.
_logging.getLogger("torch.utils._pytree").setLevel(_logging.ERROR)
