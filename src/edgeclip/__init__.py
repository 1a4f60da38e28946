"""edgeclip: distil CLIP vision-language teachers into small, fast edge students.

The top-level package imports nothing heavy, so that ``edgeclip.runtime`` stays
usable on devices without torch. Import the parts you need::

    from edgeclip.teachers import load_teacher
    from edgeclip.students import create_student
"""

__version__ = "0.1.0"
